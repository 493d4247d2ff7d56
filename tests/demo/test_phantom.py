"""The phantom generator: contract, imbalance, anisotropy, determinism and a subtle, real cue."""
import json

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.verification import verify_dataset
from neonet_toolkit.demo.phantom import make_case, make_phantom_dataset


def test_dataset_follows_contract(tmp_path):
    folder = make_phantom_dataset(tmp_path, 501, "P", n_train=12, n_test=3, shape_xyz=(24, 24, 12),
                                  spacing=(1.5, 1.5, 3.0), with_vessel=True, seed=1)
    ds = NeoNetDataset.load(folder)
    assert ds.class_counts() == {0: 8, 1: 4}  # about 1:2
    assert set(ds.roles.labels) == {"background", "liver", "tumor", "vessel"}
    verify_dataset(ds, full=True)
    assert len(list((folder / "imagesTs").glob("*_0000.nii.gz"))) == 3
    sizes = set()
    for cid in ds.case_ids:
        img = sitk.ReadImage(str(ds.image_file(cid)))
        assert img.GetSpacing() == (1.5, 1.5, 3.0)  # anisotropic
        sizes.add(img.GetSize())
    assert len(sizes) > 1  # sizes vary (odd sizes included)
    dj = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["numTraining"] == 12 and dj["neonet"]["target"] == "PNI"


def test_seeded_and_deterministic(tmp_path):
    a = make_phantom_dataset(tmp_path / "a", 501, "P", n_train=4, n_test=0, shape_xyz=(20, 20, 10), seed=3)
    b = make_phantom_dataset(tmp_path / "b", 501, "P", n_train=4, n_test=0, shape_xyz=(20, 20, 10), seed=3)
    for f in sorted((a / "imagesTr").iterdir()):
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(b / "imagesTr" / f.name)))
        np.testing.assert_array_equal(x, y)


def _ring_contrast(img, masks):
    tumor, liver = masks["tumor"], masks["liver"]
    ring = binary_dilation(tumor, iterations=2) & liver
    far = liver & ~binary_dilation(tumor, iterations=5)
    return (img[ring].mean() - img[far].mean()) / img[far].mean()


def test_pni_cue_is_real_but_subtle():
    """Positives have a darker peritumoral ring; the tumour itself and its size do not differ."""
    rng = np.random.default_rng(0)
    ring = {0: [], 1: []}
    size = {0: [], 1: []}
    for i in range(24):
        y = i % 2
        img, masks = make_case(rng, (48, 48, 24), (1.5, 1.5, 3.0), bool(y), False)
        ring[y].append(_ring_contrast(img, masks))
        size[y].append(masks["tumor"].sum())
    pos, neg = np.mean(ring[1]), np.mean(ring[0])
    assert pos < neg - 0.03          # a real, measurable cue ...
    assert pos > -0.15               # ... but only a few percent of liver intensity, not a flag
    assert abs(np.mean(size[1]) - np.mean(size[0])) < 0.35 * np.mean(size[0])  # no size shortcut
