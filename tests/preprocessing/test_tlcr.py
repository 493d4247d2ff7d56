"""TLCR against hand-computed crops."""
import numpy as np
import pytest

from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.preprocessing.tlcr import crop_start, extract, tlcr, tlcr_from_segmentation


def _volume(shape):
    # every voxel holds a unique value: its flat index + 1 (so a crop identifies its origin)
    return (np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(shape)


def _masks(shape, lo, hi, organ_pad=1):
    tumor = np.zeros(shape, bool)
    tumor[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    organ = np.zeros(shape, bool)
    organ[tuple(slice(max(a - organ_pad, 0), b + organ_pad) for a, b in zip(lo, hi))] = True
    organ &= ~tumor
    return organ, tumor


def test_interior_crop_matches_hand_computation():
    shape, crop = (20, 30, 40), (6, 8, 10)
    img = _volume(shape)
    organ, tumor = _masks(shape, (8, 12, 15), (11, 17, 22))
    ip, lp, info = tlcr(img, organ, tumor, crop)
    # bbox min (8,12,15), max+1 (11,17,22) -> center floor((8+11)/2, (12+17)/2, (15+22)/2) = (9, 14, 18)
    assert info.center == (9, 14, 18)
    # start = center - C//2 = (6, 10, 13), inside the volume -> unchanged
    assert info.start == (6, 10, 13)
    ref = img[6:12, 10:18, 13:23]
    roi = (organ | tumor)[6:12, 10:18, 13:23]
    np.testing.assert_array_equal(ip[0], ref * roi)
    np.testing.assert_array_equal(ip[1], ref * tumor[6:12, 10:18, 13:23])
    np.testing.assert_array_equal(lp[0], roi.astype(np.uint8))
    np.testing.assert_array_equal(lp[1], tumor[6:12, 10:18, 13:23].astype(np.uint8))
    assert ip.shape == (2, 6, 8, 10) and ip.dtype == np.float32 and lp.dtype == np.uint8
    assert info.tumor_voxels == 3 * 5 * 7 == info.tumor_voxels_in_crop
    assert not info.tumor_clipped and not info.empty_tumor and not info.padded


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_low_border_clamps_to_zero(axis):
    shape, crop = [20, 22, 24], [8, 8, 8]
    lo, hi = [9, 9, 9], [11, 11, 11]
    lo[axis], hi[axis] = 0, 2  # tumour at the low border: center 1, start 1-4=-3 -> 0
    img = _volume(tuple(shape))
    organ, tumor = _masks(tuple(shape), lo, hi)
    ip, lp, info = tlcr(img, organ, tumor, crop)
    expected_start = [10 - 4] * 3
    expected_start[axis] = 0
    assert list(info.start) == expected_start
    sl = tuple(slice(s, s + c) for s, c in zip(expected_start, crop))
    np.testing.assert_array_equal(ip[1], img[sl] * tumor[sl])
    assert ip.shape[1:] == tuple(crop)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_high_border_clamps_so_crop_stays_full(axis):
    # The paper's algorithm only clamps at 0; near the far border the crop would be short.
    shape, crop = [20, 22, 24], [8, 8, 8]
    lo, hi = [9, 9, 9], [11, 11, 11]
    lo[axis], hi[axis] = shape[axis] - 2, shape[axis]
    img = _volume(tuple(shape))
    organ, tumor = _masks(tuple(shape), lo, hi)
    ip, lp, info = tlcr(img, organ, tumor, crop)
    expected_start = [6, 6, 6]
    expected_start[axis] = shape[axis] - crop[axis]  # clamped: start <= shape - C
    assert list(info.start) == expected_start
    sl = tuple(slice(s, s + c) for s, c in zip(expected_start, crop))
    np.testing.assert_array_equal(ip[0], img[sl] * (organ | tumor)[sl])
    assert int(lp[1].sum()) == info.tumor_voxels == 2 * 2 * 2


def test_volume_smaller_than_crop_is_padded_symmetrically():
    shape, crop = (5, 9, 12), (8, 8, 16)
    img = _volume(shape)
    organ, tumor = _masks(shape, (1, 3, 4), (3, 5, 8))
    ip, lp, info = tlcr(img, organ, tumor, crop)
    # axis 0: 5 < 8 -> start -(3//2) = -1; axis 1: 9 >= 8 -> center 4, start 0, clamp [0, 1] -> 0;
    # axis 2: 12 < 16 -> start -(4//2) = -2
    assert info.start == (-1, 0, -2)
    assert info.padded
    assert ip.shape == (2, 8, 8, 16)
    expected = np.zeros(crop, np.float32)
    expected[1:6, :, 2:14] = img[:, 0:8, :]
    roi = np.zeros(crop, bool)
    roi[1:6, :, 2:14] = (organ | tumor)[:, 0:8, :]
    np.testing.assert_array_equal(ip[0], expected * roi)
    assert int(lp[1].sum()) == int(tumor.sum())
    # padding is zero in every channel
    assert ip[:, 0].max() == 0 and ip[:, 6:].max() == 0 and ip[:, :, :, :2].max() == 0


def test_empty_tumor_returns_zeros_and_flag():
    shape = (10, 10, 10)
    img = _volume(shape)
    organ = np.ones(shape, bool)
    ip, lp, info = tlcr(img, organ, np.zeros(shape, bool), (4, 4, 4))
    assert info.empty_tumor and info.start is None and info.tumor_voxels == 0
    assert ip.shape == (2, 4, 4, 4) and not ip.any() and not lp.any()


def test_odd_sizes_and_odd_crop():
    shape, crop = (13, 17, 19), (5, 7, 9)
    img = _volume(shape)
    organ, tumor = _masks(shape, (4, 6, 7), (7, 9, 10))
    ip, lp, info = tlcr(img, organ, tumor, crop)
    # center (5, 7, 8); start = center - C//2 = (3, 4, 4)
    assert info.center == (5, 7, 8) and info.start == (3, 4, 4)
    sl = (slice(3, 8), slice(4, 11), slice(4, 13))
    np.testing.assert_array_equal(ip[0], img[sl] * (organ | tumor)[sl])


def test_tumor_larger_than_crop_is_flagged():
    shape = (30, 30, 30)
    organ, tumor = _masks(shape, (5, 5, 5), (25, 25, 25))
    _, lp, info = tlcr(_volume(shape), organ, tumor, (8, 8, 8))
    assert info.tumor_clipped
    assert info.tumor_voxels_in_crop == int(lp[1].sum()) == 8 ** 3 < info.tumor_voxels


def test_labels_resolved_by_name_not_id():
    roles = resolve_label_roles({"labels": {"background": 0, "liver": 1, "vessel": 2, "tumor": 3}})
    seg = np.zeros((10, 10, 10), np.int16)
    seg[2:8, 2:8, 2:8] = 1
    seg[4:6, 2:8, 2:8] = 2  # vessel: not organ, not tumour
    seg[3:5, 3:5, 3:5] = 3
    img = _volume(seg.shape)
    ip, lp, info = tlcr_from_segmentation(img, seg, roles, (4, 4, 4))
    assert info.tumor_voxels == 8
    assert info.start == (2, 2, 2)
    sl = (slice(2, 6),) * 3
    np.testing.assert_array_equal(lp[0], np.isin(seg[sl], (1, 3)).astype(np.uint8))
    np.testing.assert_array_equal(lp[1], (seg[sl] == 3).astype(np.uint8))


def test_crop_start_and_extract_helpers():
    np.testing.assert_array_equal(crop_start((2, 50, 97), (100, 100, 100), (10, 10, 10)), (0, 45, 90))
    vol = np.arange(10)
    np.testing.assert_array_equal(extract(vol, (-2,), (4,)), [0, 0, 0, 1])
    np.testing.assert_array_equal(extract(vol[None], (8,), (4,))[0], [8, 9, 0, 0])


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        tlcr(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), bool), np.zeros((4, 4, 4), bool), (2, 2, 2))
