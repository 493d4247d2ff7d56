"""External-site demo cohort: layout, seeds disjoint from the training phantom, exact reproducibility, each
shift measured in the written images, and refusals of bad input."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from neonet_toolkit.demo import external_site as ext
from neonet_toolkit.demo.external_site import (EXTERNAL_SITE_FILE, SiteShift, external_case, make_external_site,
                                               n_positive, organ_coordinate)
from neonet_toolkit.demo.phantom import make_phantom_dataset
from neonet_toolkit.run import make_demo_dataset

N = 30
SHAPE = (48, 48, 24)


def _ids(folder, split="Ts"):
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / f"images{split}").glob("*_0000.nii.gz"))


def _load(folder, cid, split="Ts"):
    im = sitk.ReadImage(str(folder / f"images{split}" / f"{cid}_0000.nii.gz"))
    lab = sitk.ReadImage(str(folder / f"labels{split}" / f"{cid}.nii.gz"))
    assert im.GetSpacing() == lab.GetSpacing() and im.GetSize() == lab.GetSize()
    return sitk.GetArrayFromImage(im).astype(np.float64), sitk.GetArrayFromImage(lab), im.GetSpacing(), im.GetSize()


def _liver(folder, split="Ts"):
    return np.concatenate([a[lab == 1] for a, lab, _, _ in (_load(folder, c, split) for c in _ids(folder, split))])


def _pairs(a, b):
    """The same patients in two cohorts of one seed (ids carry the site name)."""
    ia, ib = _ids(a), _ids(b)
    assert [i.rsplit("_", 1)[1] for i in ia] == [i.rsplit("_", 1)[1] for i in ib]
    return list(zip(ia, ib))


def _csv(folder):
    with open(folder / "case_labels.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """One training phantom and external cohorts of one seed (same patients), neutral and shifted."""
    root = tmp_path_factory.mktemp("raw")
    out = {"phantom": make_phantom_dataset(root, 501, "Phantom", n_train=N, n_test=0, shape_xyz=SHAPE, seed=0)}
    shifts = {"neutral": None, "k13": SiteShift(intensity_scale=1.3), "k11": SiteShift(intensity_scale=1.1),
              "bias": SiteShift(bias_amplitude=0.3), "noise": SiteShift(noise=0.05),
              "spacing": SiteShift(spacing_factors=(1.2, 1.2, 1.0))}
    for name, shift in shifts.items():
        out[name] = make_external_site(root, name, n_cases=N, shift=shift, shape_xyz=SHAPE, seed=0)
    return out


def test_layout_csv_and_record(cohorts):
    folder = cohorts["neutral"]
    assert {p.name for p in folder.iterdir()} == {"imagesTs", "labelsTs", "case_labels.csv", "dataset.json",
                                                    EXTERNAL_SITE_FILE}
    rows = _csv(folder)
    assert list(rows[0]) == ["case_id", "PNI", "site", "scanner"]
    ids = [r["case_id"] for r in rows]
    assert ids == _ids(folder) and len(ids) == N
    assert ids == sorted(p.name[: -len(".nii.gz")] for p in (folder / "labelsTs").glob("*.nii.gz"))
    assert {r["site"] for r in rows} == {"neutral"} and {r["scanner"] for r in rows} == {"neutral-MR1"}
    assert {r["PNI"] for r in rows} == {"0", "1"}
    dj = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["file_ending"] == ".nii.gz" and dj["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert dj["numTest"] == N and dj["neonet"]["target"] == "PNI"
    rec = json.loads((folder / EXTERNAL_SITE_FILE).read_text(encoding="utf-8"))
    assert rec["shift"]["neutral"] is True and rec["seed"] == 0 and rec["n_cases"] == N
    assert rec["cases"][ids[3]]["seed"] == [0, ext.EXTERNAL_SEED_TAG, 3]
    assert {c: str(v["PNI"]) for c, v in rec["cases"].items()} == {r["case_id"]: r["PNI"] for r in rows}
    shifted = json.loads((cohorts["spacing"] / EXTERNAL_SITE_FILE).read_text(encoding="utf-8"))
    assert shifted["shift"]["spacing_factors_xyz"] == [1.2, 1.2, 1.0] and shifted["shift"]["neutral"] is False
    assert shifted["spacing"] == [1.8, 1.8, 3.0]


def test_neutral_cohort_is_statistically_the_phantom(cohorts):
    ph, neu = _liver(cohorts["phantom"], "Tr"), _liver(cohorts["neutral"])
    # measured over seeds 0-5 at N=30: mean within 1.3 %, std within 4 %
    assert abs(neu.mean() / ph.mean() - 1) < 0.03
    assert abs(neu.std() / ph.std() - 1) < 0.06
    # the check can fail: a 10 % gain is outside the window
    assert abs(_liver(cohorts["k11"]).mean() / ph.mean() - 1) > 0.05


def test_seeds_disjoint_from_training_phantom(cohorts):
    train = [_load(cohorts["phantom"], c, "Tr")[0] for c in _ids(cohorts["phantom"], "Tr")]
    for c in _ids(cohorts["neutral"]):
        x = _load(cohorts["neutral"], c)[0]
        for t in train:
            if t.shape == x.shape:
                assert not np.array_equal(t, x)
                assert np.corrcoef(t.ravel(), x.ravel())[0, 1] < 0.99  # not the same patient either
    # the three-word seed never coincides with a training phantom's one-word seed
    a = np.random.default_rng(0).random(4)
    b = np.random.default_rng(ext.case_seed(0, 0)).random(4)
    assert not np.allclose(a, b)


def test_exactly_reproducible_from_seed(tmp_path):
    shift = SiteShift(1.3, 0.2, (1.2, 1.2, 1.0), 0.05)
    a = make_external_site(tmp_path / "a", "SiteB", n_cases=5, shift=shift, prevalence=0.4, shape_xyz=(32, 32, 16),
                           seed=7)
    b = make_external_site(tmp_path / "b", "SiteB", n_cases=5, shift=shift, prevalence=0.4, shape_xyz=(32, 32, 16),
                           seed=7)
    c = make_external_site(tmp_path / "c", "SiteB", n_cases=5, shift=shift, prevalence=0.4, shape_xyz=(32, 32, 16),
                           seed=8)
    assert (a / EXTERNAL_SITE_FILE).read_bytes() == (b / EXTERNAL_SITE_FILE).read_bytes()
    assert (a / "case_labels.csv").read_bytes() == (b / "case_labels.csv").read_bytes()
    rec = json.loads((a / EXTERNAL_SITE_FILE).read_text(encoding="utf-8"))
    for i, cid in enumerate(_ids(a)):
        xa, la, sa, _ = _load(a, cid)
        xb, lb, sb, _ = _load(b, cid)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(la, lb)
        assert sa == sb
        xc = _load(c, cid)[0]
        assert xc.shape != xa.shape or not np.array_equal(xa, xc)  # another seed, other patients
        # one case alone, from its recorded seed and the recorded parameters
        entry = rec["cases"][cid]
        assert entry["seed"] == ext.case_seed(7, i)
        img, masks, grid, spacing = external_case(7, i, bool(entry["PNI"]), shift, shape_xyz=(32, 32, 16))
        np.testing.assert_array_equal(img, xa.astype(np.float32))
        assert list(grid) == entry["shape_xyz"]


def test_intensity_scale_moves_organ_median_by_k(cohorts):
    base = np.median(_liver(cohorts["neutral"]))
    assert np.median(_liver(cohorts["k13"])) / base == pytest.approx(1.3, abs=0.005)
    assert np.median(_liver(cohorts["k11"])) / base == pytest.approx(1.1, abs=0.005)
    # background (corner outside the body) scales too
    c0, c1 = _pairs(cohorts["neutral"], cohorts["k13"])[0]
    assert _load(cohorts["k13"], c1)[0][:, :4, :4].mean() / _load(cohorts["neutral"], c0)[0][:, :4, :4].mean() \
        == pytest.approx(1.3, rel=1e-4)


def test_bias_field_gradient_across_organ(cohorts):
    rec = json.loads((cohorts["bias"] / EXTERNAL_SITE_FILE).read_text(encoding="utf-8"))
    direction = rec["shift"]["bias_direction_xyz"]
    est_bias, est_none = [], []
    for c0, c in _pairs(cohorts["neutral"], cohorts["bias"]):
        xb, lab, sp, _ = _load(cohorts["bias"], c)
        x0 = _load(cohorts["neutral"], c0)[0]
        organ = lab > 0
        t = organ_coordinate(organ, sp, direction)
        assert t[organ].min() == pytest.approx(-0.5) and t[organ].max() == pytest.approx(0.5)
        # paired: the written ratio is the stated linear field, peak to peak 0.3 across the organ
        ratio = xb[organ] / x0[organ]
        np.testing.assert_allclose(ratio, 1 + 0.3 * t[organ], rtol=1e-5)
        assert ratio.max() - ratio.min() == pytest.approx(0.3, abs=1e-4)
        # from the shifted images alone: slope / intercept of liver intensity on t
        m = lab == 1
        for img, out in ((xb, est_bias), (x0, est_none)):
            slope, icpt = np.polyfit(t[m], img[m], 1)
            out.append(slope / icpt)
    # per case the phantom's own smooth 5 % field gives SD ~0.11; the cohort mean is within 0.05
    assert np.mean(est_bias) == pytest.approx(0.3, abs=0.05)
    assert np.mean(est_none) == pytest.approx(0.0, abs=0.05)


def test_spacing_shift_keeps_physical_size(cohorts):
    vol0, vol1 = [], []
    for c0, c1 in _pairs(cohorts["neutral"], cohorts["spacing"]):
        _, l0, sp0, sz0 = _load(cohorts["neutral"], c0)
        _, l1, sp1, sz1 = _load(cohorts["spacing"], c1)
        np.testing.assert_allclose(sp0, (1.5, 1.5, 3.0))
        np.testing.assert_allclose(sp1, (1.8, 1.8, 3.0), rtol=1e-6)
        fov0, fov1 = np.array(sp0) * sz0, np.array(sp1) * sz1
        assert np.all(np.abs(fov1 - fov0) <= np.array(sp1) / 2 + 1e-3)  # same field of view, within a voxel
        assert sz1[0] < sz0[0] and sz1[2] == sz0[2]
        vol0.append((l0 > 0).sum() * np.prod(sp0))
        vol1.append((l1 > 0).sum() * np.prod(sp1))
    # same organ in mm^3 (liver centre and radii are the same draws; only the voxel-scale deformation differs)
    assert np.mean(vol1) / np.mean(vol0) == pytest.approx(1.0, abs=0.05)


def test_noise_raises_background_std(cohorts):
    bg0, bg1, diff = [], [], []
    for c0, c1 in _pairs(cohorts["neutral"], cohorts["noise"]):
        x0, lab, _, _ = _load(cohorts["neutral"], c0)
        x1 = _load(cohorts["noise"], c1)[0]
        bg0.append(x0[:, :4, :4].ravel())  # corners outside the body
        bg1.append(x1[:, :4, :4].ravel())
        diff.append((x1 - x0)[lab == 1])
    s0, s1 = np.std(np.concatenate(bg0)), np.std(np.concatenate(bg1))
    assert s1 / s0 > 1.2  # measured 1.32 for noise 0.05
    # in the liver (SNR ~20, Rician ~ Gaussian) the added noise has the stated SD: 0.05 * 800
    assert np.std(np.concatenate(diff)) == pytest.approx(40.0, rel=0.05)
    assert abs(np.median(_liver(cohorts["noise"])) / np.median(_liver(cohorts["neutral"])) - 1) < 0.01


@pytest.mark.parametrize("n,p", [(40, 0.5), (40, 0.1), (40, 0.01), (7, 0.99), (30, 1 / 3)])
def test_prevalence_within_one_case(tmp_path, n, p):
    k = n_positive(n, p)
    assert abs(k - n * p) <= 1 and 1 <= k <= n - 1
    if n <= 7:
        folder = make_external_site(tmp_path, "P", n_cases=n, prevalence=p, shape_xyz=(24, 24, 12))
        rows = _csv(folder)
        assert sum(int(r["PNI"]) for r in rows) == k == 6
        assert json.loads((folder / EXTERNAL_SITE_FILE).read_text(encoding="utf-8"))["prevalence"] == 6 / 7


def test_prevalence_written(tmp_path):
    folder = make_external_site(tmp_path, "P", n_cases=20, prevalence=0.5, shape_xyz=(24, 24, 12))
    assert sum(int(r["PNI"]) for r in _csv(folder)) == 10


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_prevalence_refused(tmp_path, p):
    with pytest.raises(ValueError, match="prevalence"):
        make_external_site(tmp_path, "S", n_cases=4, prevalence=p, shape_xyz=(24, 24, 12))
    assert not (tmp_path / "S").exists()


@pytest.mark.parametrize("kw,match", [({"spacing_factors": (0.0, 1.0, 1.0)}, "spacing"),
                                      ({"spacing_factors": (1.0, -1.2, 1.0)}, "spacing"),
                                      ({"spacing_factors": (1.0, 1.0)}, "spacing"),
                                      ({"intensity_scale": 0.0}, "intensity"),
                                      ({"bias_amplitude": 1.0}, "bias"),
                                      ({"noise": -0.01}, "noise")])
def test_bad_shift_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        SiteShift(**kw)


def test_existing_folder_refused_untouched(tmp_path):
    (tmp_path / "SiteB").mkdir()
    (tmp_path / "SiteB" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_external_site(tmp_path, "SiteB", n_cases=4, shape_xyz=(24, 24, 12))
    assert [p.name for p in (tmp_path / "SiteB").iterdir()] == ["mine.txt"]
    assert (tmp_path / "SiteB" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SiteB"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = ext._write_nifti

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full")
        real(*a, **k)

    monkeypatch.setattr(ext, "_write_nifti", flaky)
    with pytest.raises(OSError):
        make_external_site(tmp_path, "SiteB", n_cases=4, shape_xyz=(24, 24, 12))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_bad_site_name_refused(tmp_path, name):
    with pytest.raises(ValueError, match="site name"):
        make_external_site(tmp_path, name, n_cases=4, shape_xyz=(24, 24, 12))


def test_cli_external_site(tmp_path, capsys):
    argv = ["-o", str(tmp_path), "--external-site", "SiteB", "--n-cases", "6", "--shape", "24", "24", "12",
            "--shift-intensity", "1.3", "--shift-bias", "0.2", "--shift-spacing", "1.2", "1.2", "1.0",
            "--shift-noise", "0.05", "--prevalence", "0.5", "--seed", "3"]
    assert make_demo_dataset.main(argv) == 0
    folder = tmp_path / "SiteB"
    assert capsys.readouterr().out.strip() == str(folder)
    rec = json.loads((folder / EXTERNAL_SITE_FILE).read_text(encoding="utf-8"))
    assert rec["shift"] == {"intensity_scale": 1.3, "bias_amplitude": 0.2, "bias_direction_xyz": [0.0, 1.0, 0.0],
                            "spacing_factors_xyz": [1.2, 1.2, 1.0], "noise": 0.05, "neutral": False}
    assert rec["seed"] == 3 and rec["n_positive"] == 3 and rec["source_phantom"]["shape_xyz"] == [24, 24, 12]
    assert sitk.ReadImage(str(next((folder / "imagesTs").iterdir()))).GetSpacing() == pytest.approx((1.8, 1.8, 3.0))
    # again: refused, nothing changed
    before = (folder / EXTERNAL_SITE_FILE).read_bytes()
    assert make_demo_dataset.main(argv) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (folder / EXTERNAL_SITE_FILE).read_bytes() == before


@pytest.mark.parametrize("extra,match", [(["--prevalence", "1"], "prevalence"),
                                         (["--shift-spacing", "0", "1", "1"], "spacing"),
                                         (["--label-noise", "0.1"], "label-noise")])
def test_cli_bad_input(tmp_path, capsys, extra, match):
    argv = ["-o", str(tmp_path), "--external-site", "SiteB", "--n-cases", "4", "--shape", "24", "24", "12", *extra]
    assert make_demo_dataset.main(argv) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "SiteB").exists()


def test_cli_shift_options_need_external_site(tmp_path, capsys):
    assert make_demo_dataset.main(["-o", str(tmp_path), "--shift-intensity", "1.3", "--n_train", "4"]) == 2
    assert "--external-site" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    # without them the training phantom is written as before
    assert make_demo_dataset.main(["-o", str(tmp_path), "--n_train", "4", "--n_test", "1", "--shape", "24", "24",
                                   "12"]) == 0
    assert (tmp_path / "Dataset501_NeoNetPhantom" / "imagesTr").is_dir()


def test_dicom_series_deterministic(tmp_path):
    a = make_external_site(tmp_path / "a", "SiteD", n_cases=2, shape_xyz=(24, 24, 12), dicom=True)
    b = make_external_site(tmp_path / "b", "SiteD", n_cases=2, shape_xyz=(24, 24, 12), dicom=True)
    for cid in _ids(a):
        fa = sorted((a / "dicomTs" / cid).iterdir())
        fb = sorted((b / "dicomTs" / cid).iterdir())
        assert len(fa) == sitk.ReadImage(str(a / "imagesTs" / f"{cid}_0000.nii.gz")).GetSize()[2]
        # UIDs are seeded by the folder name: written under a temporary parent, they are those of the result
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
