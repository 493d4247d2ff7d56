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


def test_default_output_unchanged(tmp_path):
    """The hard-benchmark options leave the default demo as it was (figures recorded before they existed)."""
    f = make_phantom_dataset(tmp_path, 501, "P", n_train=6, n_test=2, shape_xyz=(24, 24, 12), seed=5)
    sums = [float(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float64).sum())
            for p in sorted((f / "imagesTr").iterdir()) + sorted((f / "imagesTs").iterdir())]
    np.testing.assert_allclose(sums, [1080654.3, 1229779.3, 2100801.0, 1524723.7, 1773945.8, 1410244.2,
                                      1673809.3, 1944143.0], rtol=1e-6)
    assert (f / "case_labels.csv").read_text().split() == ["case_id,PNI", "p_000,1", "p_001,0", "p_002,0",
                                                          "p_003,0", "p_004,0", "p_005,1"]
    meta = json.loads((f / "phantom.json").read_text())
    assert meta["cue_kind"] == "halo" and meta["cue_width_voxels"] is None and meta["flipped"] == []


def _cue_voxels(cue_kind, width, seed=0):
    """Voxels darkened by the cue: the same case (same draws) with and without cue intensity."""
    args = (np.random.default_rng(seed), (48, 48, 24), (1.5, 1.5, 3.0), True, False)
    with_cue, _ = make_case(*args, cue_strength=0.2, cue_kind=cue_kind, cue_width=width)
    args = (np.random.default_rng(seed),) + args[1:]
    without, _ = make_case(*args, cue_strength=0.0, cue_kind=cue_kind, cue_width=width)
    return int(((without - with_cue) > 0.05 * 800).sum())


def test_cue_width_and_kind_control_the_cue():
    """Wider cues darken more voxels; a tube has no shell, so it darkens fewer voxels than a halo."""
    n1, n3, n7 = (_cue_voxels("halo", w) for w in (1, 3, 7))
    t1, t3 = (_cue_voxels("tube", w) for w in (1, 3))
    assert 0 < n1 < n3 < n7, (n1, n3, n7)
    assert 0 < t1 < t3 < n3, (t1, t3, n3)


def test_label_noise_flips_labels_not_images(tmp_path):
    a = make_phantom_dataset(tmp_path / "a", 501, "P", n_train=30, n_test=0, shape_xyz=(20, 20, 10), seed=3,
                             cue_kind="tube", cue_width=2)
    b = make_phantom_dataset(tmp_path / "b", 501, "P", n_train=30, n_test=0, shape_xyz=(20, 20, 10), seed=3,
                             cue_kind="tube", cue_width=2, label_noise=0.3)
    for f in sorted((a / "imagesTr").iterdir()):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(f))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(b / "imagesTr" / f.name))))
    meta = json.loads((b / "phantom.json").read_text())
    rec = dict(line.split(",") for line in (b / "case_labels.csv").read_text().split()[1:])
    assert 3 <= len(meta["flipped"]) <= 18
    for c, y in meta["true_labels"].items():
        assert int(rec[c]) == (1 - y if c in meta["flipped"] else y)


def test_bad_cue_options_are_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="cue kind"):
        make_phantom_dataset(tmp_path, 501, "P", n_train=4, n_test=0, cue_kind="ring")
    with pytest.raises(ValueError, match="--label-noise"):
        make_phantom_dataset(tmp_path, 501, "P", n_train=4, n_test=0, label_noise=0.7)
