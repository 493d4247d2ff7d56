"""The one label-remapping function (model label space -> dataset label space)."""
import numpy as np

from neonet_toolkit.dataset.labels import remap_labels


def test_remap_labels_swaps_and_drops_unmapped_ids():
    seg = np.array([[0, 1, 2], [3, 4, 2]])
    out = remap_labels(seg, {1: 2, 2: 1, 4: 3})
    np.testing.assert_array_equal(out, [[0, 2, 1], [0, 3, 1]])  # 3 is not mapped: background
    assert out.dtype == np.uint8 and remap_labels(seg, {1: 1}, np.int16).dtype == np.int16
