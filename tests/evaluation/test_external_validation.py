"""neonet_validate's statistics and report (neonet_toolkit/evaluation/external_validation.py), on arrays and on
fake prediction records (the orchestration with a model package is tested where a package can be built)."""
from __future__ import annotations

import contextlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import statsmodels.api as sm
import statsmodels.formula.api as smf
import torch
from scipy.stats import norm

from neonet_toolkit import paths
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.evaluation import dataset_shift as dshift
from neonet_toolkit.evaluation import external_validation as ev
from neonet_toolkit.evaluation import recalibration as recal
from neonet_toolkit.evaluation import validation_report as vreport
from neonet_toolkit.evaluation import validation_stats as vstats
from neonet_toolkit.models import package
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import file_sha256, load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.io import save_json
from neonet_toolkit.version import __version__


def _cohort(n=2000, seed=0, shift=0.0, scale=1.0):
    """Outcomes drawn from a perfectly calibrated model p; returns (y, p, p_reported) where the reported
    probability has its logit scaled and shifted."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(-0.6, 1.4, n)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.uniform(size=n) < p).astype(int)
    return y, p, 1 / (1 + np.exp(-(scale * lp + shift)))


# ----------------------------------------------------------------------------- calibration
def test_intercept_and_slope_equal_an_independent_statsmodels_glm():
    y, _, p = _cohort(400, seed=3, shift=0.4, scale=1.3)
    lp = np.log(p / (1 - p))
    data = {"y": y, "lp": lp}
    citl_ref = smf.glm("y ~ 1", data=data, offset=lp, family=sm.families.Binomial()).fit()
    slope_ref = smf.glm("y ~ lp", data=data, family=sm.families.Binomial()).fit()
    citl, slope = vstats.calibration_in_the_large(y, p), vstats.calibration_slope(y, p)
    assert citl["intercept"] == pytest.approx(citl_ref.params["Intercept"], abs=1e-6)
    assert [citl["ci_low"], citl["ci_high"]] == pytest.approx(list(citl_ref.conf_int().loc["Intercept"]), abs=1e-6)
    assert slope["slope"] == pytest.approx(slope_ref.params["lp"], abs=1e-6)
    assert slope["intercept"] == pytest.approx(slope_ref.params["Intercept"], abs=1e-6)
    assert [slope["ci_low"], slope["ci_high"]] == pytest.approx(list(slope_ref.conf_int().loc["lp"]), abs=1e-6)
    # the shift and scale put into the data are visible (not a fit that returns 0 and 1 whatever it is given)
    assert slope["slope"] < 0.9 and slope["ci_high"] < 1


def test_perfectly_calibrated_cohort_covers_0_and_1():
    y, p, _ = _cohort(2000, seed=11)
    cal = vstats.calibration(y, p, n_boot=20)
    assert cal["citl"]["ci_low"] < 0 < cal["citl"]["ci_high"]
    assert cal["slope"]["ci_low"] < 1 < cal["slope"]["ci_high"]
    assert 0.9 < cal["o_e_ratio"] < 1.1
    assert cal["ece"] < 0.05
    # Brier and scaled Brier by hand
    brier = float(np.mean((p - y) ** 2))
    assert cal["brier"] == pytest.approx(brier)
    assert cal["scaled_brier"] == pytest.approx(1 - brier / (y.mean() * (1 - y.mean())))
    # the lowess curve stays near the diagonal where the data are dense
    g, o = np.asarray(cal["curve"]["grid"]), np.asarray(cal["curve"]["observed"])
    mid = (g > 0.2) & (g < 0.6)
    assert np.max(np.abs(o[mid] - g[mid])) < 0.08
    assert np.all(np.asarray(cal["curve"]["band_low"]) <= o + 1e-9)


def test_over_prediction_moves_the_intercept_negative_and_o_e_below_1():
    y, _, p_up = _cohort(2000, seed=11, shift=1.0)
    cal = vstats.calibration(y, p_up, n_boot=0)
    assert cal["citl"]["ci_high"] < 0
    assert cal["citl"]["intercept"] == pytest.approx(-1.0, abs=0.15)
    assert cal["o_e_ratio"] < 1


def test_too_extreme_predictions_give_a_slope_below_1():
    y, _, p_ext = _cohort(2000, seed=11, scale=2.0)
    s = vstats.calibration_slope(y, p_ext)
    assert s["ci_high"] < 1
    assert s["slope"] == pytest.approx(0.5, abs=0.07)


def test_single_class_cohort_auc_undefined_calibration_still_reported():
    p = np.linspace(0.05, 0.6, 30)
    y = np.zeros(30, int)
    d = vstats.discrimination(y, p)
    assert d["auc"] is None and "only negatives" in d["reason"] and "both classes" in d["reason"]
    cal = vstats.calibration(y, p, n_boot=5)
    assert cal["o_e_ratio"] == 0.0
    assert cal["brier"] == pytest.approx(float(np.mean(p ** 2)))
    assert cal["citl"]["intercept"] is None and "single class" in cal["citl"]["reason"]
    assert cal["scaled_brier"] is None
    cohort = ev.cohort_table([f"c{i}" for i in range(30)], {f"c{i}": 0 for i in range(30)},
                             {f"c{i}": {"probability": float(p[i]), "decision": 0, "qc_flags": []} for i in range(30)})
    md = vreport.render_markdown({"meta": {}, "analysis": vstats.analyse(cohort, n_boot=10, curve_boot=5),
                             "cohort": {"counts": cohort["counts"]}}, cohort)
    assert "AUC undefined" in md and "Calibration is still reported" in md and "observed/expected events: 0" in md
    with pytest.raises(DatasetError, match="single class"):
        recal.fit_recalibration(y, p, "intercept")


def test_slope_not_estimable_is_said_with_the_reason():
    p = np.linspace(0.1, 0.9, 40)
    y = (p > 0.5).astype(int)  # the score splits the classes perfectly
    s = vstats.calibration_slope(y, p)
    assert s["slope"] is None and "separation" in s["reason"]
    flat = 0.283 + np.linspace(0, 0.004, 40)  # what a barely trained classifier gives
    s = vstats.calibration_slope(np.r_[np.ones(20), np.zeros(20)], flat)
    assert s["slope"] is None and "hardly vary" in s["reason"] and "0.283-0.287" in s["reason"]
    assert vstats.calibration_in_the_large(np.r_[np.ones(20), np.zeros(20)], flat)["intercept"] == pytest.approx(
        math.log(1.0) - float(np.mean(stats.logit(flat))), abs=0.01)
    with pytest.raises(DatasetError, match="try --recalibrate intercept"):
        recal.fit_recalibration(np.r_[np.ones(20), np.zeros(20)], flat, "logistic")


# ----------------------------------------------------------------------------- discrimination
def test_discrimination_uses_delong_and_a_seeded_bootstrap():
    y, p, _ = _cohort(150, seed=5)
    d = vstats.discrimination(y, p, n_boot=300, seed=4)
    ref = stats.delong_ci(y, p)
    assert d["auc"] == pytest.approx(ref["auc"]) and d["delong"]["ci_low"] == pytest.approx(ref["ci_low"])
    assert d["bootstrap"]["ci_low"] < d["auc"] < d["bootstrap"]["ci_high"]
    assert vstats.discrimination(y, p, n_boot=300, seed=4)["bootstrap"] == d["bootstrap"]


# ----------------------------------------------------------------------------- clinical usefulness
def test_net_benefit_equals_a_hand_computation():
    rng = np.random.default_rng(2)
    p = np.round(rng.uniform(size=120), 2)  # rounded: ties exactly at the thresholds
    y = (rng.uniform(size=120) < p).astype(int)
    thr = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
    dc = vstats.decision_curve(y, p, thr)
    n = y.size
    for i, pt in enumerate(thr):
        pos = p >= pt
        tp, fp = int((pos & (y == 1)).sum()), int((pos & (y == 0)).sum())
        assert dc["model"][i] == pytest.approx(tp / n - fp / n * pt / (1 - pt), abs=1e-12)
        prev = y.mean()
        assert dc["treat_all"][i] == pytest.approx(prev - (1 - prev) * pt / (1 - pt), abs=1e-12)
        assert dc["treat_none"][i] == 0.0


def _wilson_by_hand(k, n, z=norm.ppf(0.975)):
    ph = k / n
    centre = (ph + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_threshold_metrics_with_wilson_cis_equal_the_hand_formula():
    y = np.array([1] * 12 + [0] * 30)
    d = np.array([1] * 9 + [0] * 3 + [1] * 5 + [0] * 25)
    t = vstats.threshold_performance(y, d)
    assert (t["tp"], t["fn"], t["fp"], t["tn"]) == (9, 3, 5, 25)
    for key, (k, n) in {"sensitivity": (9, 12), "specificity": (25, 30), "ppv": (9, 14), "npv": (25, 28)}.items():
        lo, hi = _wilson_by_hand(k, n)
        assert t[key]["value"] == pytest.approx(k / n)
        assert (t[key]["ci_low"], t[key]["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert stats.wilson_ci(9, 12) == pytest.approx((t["sensitivity"]["ci_low"], t["sensitivity"]["ci_high"]))


# ----------------------------------------------------------------------------- subgroups, segmentation
def test_subgroups_warn_below_the_minimum_size():
    y, p, _ = _cohort(200, seed=8)
    sites = np.where(np.arange(200) < 180, "A", "B")
    g = vstats.subgroups(y, p, (p >= 0.5).astype(int), {"site": sites}, n_boot=50)["site"]
    assert g["A"]["n"] == 180 and g["A"]["warning"] is None
    assert g["B"]["n"] == 20 and "small subgroup" in g["B"]["warning"]
    assert g["A"]["discrimination"]["auc"] == pytest.approx(stats.roc_auc(y[:180], p[:180]))


def test_dice_per_label_and_auc_difference():
    pred = np.zeros((4, 4, 4), int)
    ref = np.zeros((4, 4, 4), int)
    pred[:2], ref[:3] = 1, 1
    pred[3, 0, 0] = 2
    d = vstats.dice_per_label(pred, ref, {"background": 0, "liver": 1, "tumor": (2,), "vessel": 3})
    assert d["liver"] == pytest.approx(2 * 32 / (32 + 48)) and d["tumor"] == 0.0 and d["vessel"] is None
    # an external label file numbering the labels differently is matched by name
    ref2 = np.where(ref == 1, 5, ref)
    ref2[3, 0, 0] = 7
    d2 = vstats.dice_per_label(pred, ref2, {"background": 0, "liver": 1, "tumor": 2}, {"liver": 5, "tumor": 7})
    assert d2["liver"] == pytest.approx(2 * 32 / (32 + 48)) and d2["tumor"] == 1.0
    assert vstats.dice_per_label(pred, ref2, {"liver": 1, "tumor": 2}, {"Leber": 5}) == {}
    a = {"auc": 0.8, "delong": {"se": 0.03}}
    b = {"auc": 0.7, "delong": {"se": 0.04}}
    diff = vstats.independent_auc_difference(a, b)
    assert diff["z"] == pytest.approx(0.1 / 0.05) and diff["p_value"] == pytest.approx(2 * norm.sf(2.0))


# ----------------------------------------------------------------------------- dataset shift
SMD_CHANCE_SEEN = 0.25


def _reference():
    rng = np.random.default_rng(0)
    spacings = np.c_[rng.uniform(2.5, 3.5, 40), rng.uniform(0.7, 0.9, 40), rng.uniform(0.7, 0.9, 40)]
    shapes = np.c_[rng.integers(40, 60, 40), rng.integers(200, 260, 40), rng.integers(200, 260, 40)]
    fp = {"spacings": spacings.tolist(), "shapes_after_crop": shapes.tolist(),
          "foreground_intensity_properties_per_channel": {"0": {"mean": 100.0, "std": 20.0, "percentile_00_5": 50.0,
                                                               "percentile_99_5": 160.0}}}
    tlcr = [{"tumor_volume_ml": float(v), "start": [0, 0, 0], "center": [10, 40, 40], "crop_size": [20, 80, 80],
             "empty_tumor": False} for v in rng.uniform(5, 50, 40)]
    return dshift.training_reference(fp, tlcr), rng


def _external_cases(rng, n=30, spacing_scale=1.0, intensity_scale=1.0):
    cases = []
    for i in range(n):
        img = rng.normal(100 * intensity_scale, 20 * intensity_scale, (8, 8, 8))
        roi = np.zeros((8, 8, 8), bool)
        roi[2:6, 2:6, 2:6] = True
        spacing = [rng.uniform(2.5, 3.5) * spacing_scale, rng.uniform(0.7, 0.9), rng.uniform(0.7, 0.9)]
        rec = {"case_id": f"e{i}", "spacing": spacing, "tumor_volume_ml": float(rng.uniform(5, 50)),
               "tlcr": {"start": [0, 0, 0], "center": [10, 40, 40], "crop_size": [20, 80, 80], "empty_tumor": False,
                        "tumor_clipped": False}}
        c = dshift.case_fingerprint(img, roi, rec)
        c["shape"] = [int(rng.integers(42, 58)), int(rng.integers(205, 255)), int(rng.integers(205, 255))]
        cases.append(c)
    return cases


def test_shift_analysis_is_quiet_on_a_matching_cohort_and_fires_on_a_shifted_one():
    ref, rng = _reference()
    same = dshift.shift_analysis(ref, _external_cases(rng, n=60))
    assert same["outside"] == [] and same["shifted"] == []
    # single cases beyond the training extremes of a continuous feature are flagged as cases, not as a cohort shift
    assert set(same["flag_counts"]) <= {"tumor_volume_outside_training", "shape_outside_training"}
    assert sum(same["flag_counts"].values()) <= 6
    # chance imbalance of 40 vs 60 cases reaches 0.3 here; it is not called a shift (2 x SE ~ 0.4)
    assert max(abs(v["smd"]) for v in same["standardized_differences"].values()) > SMD_CHANCE_SEEN
    assert abs(same["standardized_differences"]["foreground_intensity"]["smd"]) < 0.1
    assert "within the training range" in same["statement"]

    shifted = dshift.shift_analysis(ref, _external_cases(rng, spacing_scale=1.8, intensity_scale=2.0))
    assert shifted["flag_counts"]["spacing_outside_training"] == 30
    assert shifted["flag_counts"]["intensity_outside_training"] == 30
    assert {"spacing_axis0", "foreground_intensity"} <= set(shifted["outside"])
    assert shifted["standardized_differences"]["spacing_axis0"]["shifted"]
    assert shifted["standardized_differences"]["foreground_intensity"]["smd"] > 2
    assert "OUTSIDE the training range" in shifted["statement"]


def test_tlcr_border_clamping():
    base = {"crop_size": [20, 80, 80], "center": [10, 40, 40], "empty_tumor": False}
    assert not dshift.tlcr_border_clamped({**base, "start": [0, 0, 0]})
    assert dshift.tlcr_border_clamped({**base, "start": [0, 0, 5]})
    assert not dshift.tlcr_border_clamped({**base, "start": [-3, 0, 0]})  # padded axis, not clamping


# ----------------------------------------------------------------------------- bad input
def _write_cohort(tmp_path, rows, images):
    (tmp_path / "imagesTs").mkdir()
    for c in images:
        (tmp_path / "imagesTs" / f"{c}_0000.nii.gz").write_bytes(b"")
    (tmp_path / "case_labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path / "case_labels.csv"


def test_csv_ids_without_images_and_images_without_rows_are_named(tmp_path):
    csv = _write_cohort(tmp_path, ["case_id,PNI,site", "a1,1,X", "a2,0,X", "a3,0,"], ["a1", "a2", "b9"])
    labels, groups = ev.read_external_labels(csv, "PNI")
    assert labels == {"a1": 1, "a2": 0, "a3": 0} and groups == {"site": {"a1": "X", "a2": "X", "a3": "unknown"}}
    with pytest.raises(DatasetError) as e:
        ev.match_cases(labels, ["a1", "a2", "b9"], csv, tmp_path / "imagesTs")
    msg = str(e.value)
    assert "['a3']" in msg and "no image" in msg and "remove their rows" in msg
    assert "['b9']" in msg and "without a row" in msg and "Add a row" in msg
    assert ev.match_cases({"a1": 1, "a2": 0}, ["a1", "a2"], csv, tmp_path) == ["a1", "a2"]


def test_labels_not_0_1_are_refused_by_case(tmp_path):
    csv = _write_cohort(tmp_path, ["case_id,PNI", "a1,1", "a2,2", "a3,yes"], ["a1", "a2", "a3"])
    with pytest.raises(DatasetError) as e:
        ev.read_external_labels(csv, "PNI")
    msg = str(e.value)
    assert "'a2' has PNI='2'" in msg and "'a3' has PNI='yes'" in msg and "must be 0 or 1" in msg


def test_no_tumour_cases_are_excluded_from_auc_with_the_count_shown(tmp_path):
    y, p, _ = _cohort(60, seed=9)
    ids = [f"c{i:02d}" for i in range(60)]
    records = {c: {"probability": float(p[i]), "decision": int(p[i] >= 0.4), "qc_flags": [],
                   "fold_probabilities": {"0": float(p[i]), "1": float(p[i])}} for i, c in enumerate(ids)}
    for c in ids[:4]:
        records[c] = {"probability": None, "decision": None, "qc_flags": ["no_tumor"], "withheld_because": ["no_tumor"]}
    records[ids[4]] = {"status": "failed", "error": "DatasetError: unreadable image", "qc_flags": []}
    labels = {c: int(y[i]) for i, c in enumerate(ids)}
    cohort = ev.cohort_table(ids, labels, records, {"site": {c: "A" for c in ids}})
    assert cohort["counts"] == {"included": 55, "no_tumor": 4, "withheld": 0, "failed": 1}
    a = vstats.analyse(cohort, n_boot=100, curve_boot=20)
    assert a["discrimination"]["auc"] == pytest.approx(stats.roc_auc(y[5:], p[5:]))
    report = vreport.write_report(tmp_path / "out", cohort, a, None, None, {"model": "m.zip", "cohort": "ext"})
    md = (tmp_path / "out" / "validation_report.md").read_text()
    assert "no tumour found by NeoSeg: **4**" in md and "excluded from AUC" in md
    assert "`c00`: no_tumor" in md and "`c04`: failed (DatasetError: unreadable image)" in md
    for item in ("TRIPOD+AI 21", "TRIPOD+AI 12e, 23a", "TRIPOD+AI 12d, 23b"):
        assert item in md
    assert {"roc", "calibration", "decision_curve"} <= set(report["figures"])
    for f in report["figures"].values():
        assert (tmp_path / "out" / f).stat().st_size > 1000
    js = json.loads((tmp_path / "out" / "validation_report.json").read_text())
    assert js["cohort"]["counts"]["no_tumor"] == 4 and js["analysis"]["n_included"] == 55
    assert "c00" in (tmp_path / "out" / "validation_cases.csv").read_text()


# ----------------------------------------------------------------------------- model updating
def test_recalibration_fit_and_composition():
    y, _, p = _cohort(1500, seed=12, shift=0.8, scale=1.5)
    up = recal.fit_recalibration(y, p, "logistic")
    assert up["b"] == pytest.approx(vstats.calibration_slope(y, p)["slope"])
    after = vstats.calibration(y, recal.apply_recalibration(p, up), n_boot=0)
    assert after["citl"]["intercept"] == pytest.approx(0.0, abs=1e-6)  # apparent: fitted on the same cases
    assert after["slope"]["slope"] == pytest.approx(1.0, abs=1e-6)
    ui = recal.fit_recalibration(y, p, "intercept")
    assert ui["b"] == 1.0 and ui["a"] == pytest.approx(vstats.calibration_in_the_large(y, p)["intercept"])
    raw = np.linspace(0.02, 0.98, 25)
    for cal in ({"method": "none"}, {"method": "platt", "a": 0.7, "b": -0.3}):
        composed = recal.compose_calibration(cal, up)
        assert np.allclose(stats.apply_calibration(raw, composed),
                           recal.apply_recalibration(stats.apply_calibration(raw, cal), up), atol=1e-12)
    iso = {"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.1, 0.4, 0.9]}
    knots = stats.apply_calibration(np.array([0.0, 0.5, 1.0]), recal.compose_calibration(iso, up))
    assert np.allclose(knots, recal.apply_recalibration(np.array([0.1, 0.4, 0.9]), up))
    with pytest.raises(ValueError, match="intercept, logistic"):
        recal.fit_recalibration(y, p, "isotonic")


def _fake_package(root, extra: dict | None = None):
    """A minimal model package folder that verify_package accepts: two classifier fold checkpoints, a manifest
    (``extra``: more files, relative name -> JSON content)."""
    for rel, content in (extra or {}).items():
        save_json(content, root / rel)
    ck = {f: root / "neonet_results" / "Dataset9_X" / "cls_x__P" / f"fold_{f}" / "checkpoint_final.pth"
          for f in (0, 1)}
    for f, path in ck.items():
        save_checkpoint({"network": {"w": torch.ones(2)}, "extra": {"finished": True, "inference": {
            "threshold": 0.3 + 0.1 * f, "calibration": {"method": "platt", "a": 1.2, "b": 0.1},
            "threshold_source": "inner"}}}, path)
    (root / package.MODEL_CARD).write_text("card\n")
    rels = [p.relative_to(root).as_posix() for p in ck.values()] + [package.MODEL_CARD, *(extra or {})]
    manifest = {"format": package.FORMAT, "format_version": package.FORMAT_VERSION, "toolkit_version": __version__,
                "dataset_name": "Dataset9_X", "plans_name": "P", "seg_model": "", "seg_folds": [], "cls_run": "cls_x",
                "cls_folds": [0, 1], "calibration": {"0": {"threshold": 0.3}, "1": {"threshold": 0.4}},
                "files": {r: {"sha256": file_sha256(root / r), "size": (root / r).stat().st_size} for r in rels}}
    save_json(manifest, root / package.MANIFEST)
    package.verify_package(root)
    return ck


def test_write_recalibrated_model_is_a_new_verified_version_with_provenance(tmp_path):
    root = tmp_path / "pkg"
    ck = _fake_package(root)
    up = {"method": "intercept", "a": -0.7, "b": 1.0, "n": 80}
    target = tmp_path / "out" / "model_recalibrated_intercept.zip"
    rec = recal.write_recalibrated_model(root, ck, up, target, {"parent_model_sha256": "abc", "method": "intercept"})
    m = package.verify_package(target)  # every hash and checkpoint of the new version checks out
    new = tmp_path / "opened"
    with zipfile.ZipFile(target) as zf:
        zf.extractall(new)
    for f in (0, 1):
        rel = ck[f].relative_to(root).as_posix()
        st = load_checkpoint(new / rel)["extra"]["inference"]
        old_thr = 0.3 + 0.1 * f
        assert st["threshold"] == pytest.approx(float(recal.apply_recalibration(np.array([old_thr]), up)[0]))
        assert st["calibration"] == {"method": "platt", "a": 1.2, "b": pytest.approx(0.1 - 0.7)}
        assert m["files"][rel]["sha256"] == file_sha256(new / rel) != file_sha256(root / rel)
        assert m["calibration"][str(f)]["threshold"] == pytest.approx(st["threshold"])
        # a decision at the old threshold is the same decision at the new one
        p = np.array([old_thr - 0.01, old_thr, old_thr + 0.01])
        assert np.array_equal(p >= old_thr, recal.apply_recalibration(p, up) >= st["threshold"])
        assert load_checkpoint(root / rel)["extra"]["inference"]["threshold"] == pytest.approx(old_thr)  # parent kept
    assert m["model_version"]["parent_model_sha256"] == "abc" and rec["update"]["a"] == -0.7
    assert json.loads((new / "recalibration.json").read_text())["method"] == "intercept"
    card = (new / package.MODEL_CARD).read_text()
    assert "Dataset9_X" in card  # the card is regenerated from the new manifest
    assert "## Model version (recalibrated)" in card and "parent model sha256: `abc`" in card
    assert "intercept recalibration, logit(p') = -0.700 + 1.000 * logit(p)" in card and "apparent" in card
    assert not list((tmp_path / "out").glob(".*partial"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        recal.write_recalibrated_model(root, ck, up, target, {})


# ----------------------------------------------------------------------------- the orchestration (validate)
def _nifti(array, path, spacing_zyx=(3.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(v) for v in reversed(spacing_zyx)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def test_validate_end_to_end_with_a_stand_in_predictor(tmp_path, monkeypatch):
    """validate(): the CSV is checked before any prediction, every case goes through predict() once, the report
    reads the records, the images (shift) and the external labels (Dice), and --recalibrate writes a new version.
    NeoSeg/NeoCls are replaced by a stand-in that writes neonet_predict's records and masks."""
    rng = np.random.default_rng(1)
    n = 40
    ids = [f"ext{i:03d}" for i in range(n)]
    ext = tmp_path / "Dataset700_External"
    probs = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < probs).astype(int)
    y[:2] = [0, 1]
    masks = {}
    for i, c in enumerate(ids):
        img = rng.normal(200.0, 30.0, (10, 24, 24)).astype(np.float32)  # twice the training intensity
        _nifti(img, ext / "imagesTs" / f"{c}_0000.nii.gz")
        seg = np.zeros((10, 24, 24), np.uint8)
        seg[2:8, 4:20, 4:20] = 1
        if i >= 3:
            seg[4:6, 8:12, 8:12] = 2
        masks[c] = seg
        gt = seg.copy()
        gt[2, 4:20, 4:20] = 0  # the external label differs a little from the prediction
        _nifti(gt, ext / "labelsTs" / f"{c}.nii.gz")
    (ext / "case_labels.csv").write_text("case_id,PNI,site\n" + "".join(
        f"{c},{y[i]},{'A' if i < 30 else 'B'}\n" for i, c in enumerate(ids)), encoding="utf-8")

    pp = "nnUNet_preprocessed/Dataset9_X"
    dataset_json = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
                    "numTraining": 10, "file_ending": ".nii.gz"}
    fingerprint = {"spacings": [[3.0, 1.0, 1.0], [2.5, 0.9, 0.9], [3.5, 1.1, 1.1]],
                   "shapes_after_crop": [[10, 24, 24], [9, 22, 22], [11, 26, 26]],
                   "foreground_intensity_properties_per_channel": {"0": {"mean": 100.0, "std": 15.0,
                                                                        "percentile_00_5": 60.0,
                                                                        "percentile_99_5": 140.0}}}
    root = tmp_path / "model"
    _fake_package(root, {f"{pp}/dataset.json": dataset_json, f"{pp}/dataset_fingerprint.json": fingerprint})
    calls = []

    @contextlib.contextmanager
    def fake_opened(src, work_folder=None):
        manifest = package.verify_package(src)
        env = {k: str(root / k) for k in ("nnUNet_raw", *package.ROOTS)}
        with paths.scoped_environ(env):
            yield package.PackageContext("Dataset9_X", root / "seg", "cls_x", None, manifest, root, env)

    def fake_predict(input_folder, output_folder, dataset, seg_model=None, cls_run=None, folds=None, device="auto"):
        calls.append((Path(input_folder).name, dataset, cls_run))
        out = Path(output_folder)
        for i, c in enumerate(ids):
            _nifti(masks[c], out / f"{c}.nii.gz")
            tumor = int((masks[c] == 2).sum())
            rec = {"case_id": c, "input": [str(Path(input_folder) / f"{c}_0000.nii.gz")],
                   "segmentation": f"{c}.nii.gz", "spacing": [3.0, 1.0, 1.0], "tumor_voxels": tumor,
                   "tumor_volume_ml": tumor * 3.0 / 1000, "qc_flags": [] if tumor else ["no_tumor"],
                   "tlcr": {"crop_size": [8, 16, 16], "start": [1, 2, 2], "center": [5, 10, 10],
                            "empty_tumor": not tumor, "tumor_clipped": False}}
            if tumor:
                rec.update(probability=float(probs[i]), decision=int(probs[i] >= 0.35), threshold=0.35,
                           fold_probabilities={"0": float(probs[i]), "1": float(probs[i])})
            else:
                rec.update(probability=None, decision=None, withheld_because=["no_tumor"])
            save_json(rec, out / "cases" / f"{c}.json")
        return {"failed": [], "cases": []}

    monkeypatch.setattr(ev, "opened_package", fake_opened)
    monkeypatch.setattr(ev, "predict", fake_predict)
    out = tmp_path / "validation"

    # bad input first: a CSV row without an image stops before any prediction
    csv = ext / "case_labels.csv"
    good = csv.read_text()
    csv.write_text(good + "ghost,1,A\n")
    with pytest.raises(DatasetError, match="ghost"):
        ev.validate(root, ext, out)
    assert calls == []
    csv.write_text(good)

    res = ev.validate(root, ext, out, recalibrate="intercept", n_boot=200)
    assert calls == [("imagesTs", "Dataset9_X", "cls_x")]
    rep = json.loads((out / "validation_report.json").read_text())
    assert rep["cohort"]["counts"] == {"included": n - 3, "no_tumor": 3, "withheld": 0, "failed": 0}
    assert rep["analysis"]["discrimination"]["auc"] == pytest.approx(stats.roc_auc(y[3:], probs[3:]))
    assert set(rep["analysis"]["subgroups"]["site"]) == {"A", "B"}
    assert rep["analysis"]["subgroups"]["site"]["B"]["warning"].startswith("small subgroup")
    # shift: the external intensities are twice the training ones: every case flagged, the cohort outside
    assert rep["dataset_shift"]["flag_counts"]["intensity_outside_training"] == n
    assert "foreground_intensity" in rep["dataset_shift"]["outside"]
    # Dice per label against labelsTs: liver loses one of its 6 slices in the label
    liver = rep["segmentation"]["per_label"]["liver"]
    assert liver["n"] == n and liver["mean"] == pytest.approx(2 * 5 / (6 + 5), abs=0.03)
    # the new model version
    zip_path = out / "model_recalibrated_intercept.zip"
    m = package.verify_package(zip_path)
    assert m["model_version"]["parent_model_sha256"] == recal.model_hash(root)
    assert m["model_version"]["cohort"]["n"] == n - 3 and m["model_version"]["method"] == "intercept"
    md = (out / "validation_report.md").read_text()
    assert "APPARENT" in md and "model_recalibrated_intercept.zip" in md and "OUTSIDE the training range" in md
    # every section names its TRIPOD+AI item, checked against Table 2 of Collins et al., BMJ 2024;385:e078378
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["## Participants and outcome events (TRIPOD+AI 21; missing data 11)",
                        "## Discrimination (TRIPOD+AI 12e, 23a)",
                        "## Calibration (TRIPOD+AI 12e, 23a)",
                        "## Clinical usefulness at the locked threshold (TRIPOD+AI 12e, 23a)",
                        "## Subgroups / centres (TRIPOD+AI 12d, 23b)",
                        "## NeoSeg on the external labels (TRIPOD+AI 23a)",
                        "## Dataset shift against the training fingerprint (TRIPOD+AI 16, 20c)",
                        "## Model updating (TRIPOD+AI 12f, 24)"]
    for png in ("roc.png", "calibration.png", "decision_curve.png", "dataset_shift.png"):
        assert (out / png).stat().st_size > 1000
    assert res["report"]["recalibration"]["apparent"]["citl"]["intercept"] == pytest.approx(0.0, abs=0.05)
    # a rerun that would replace the new model version stops before predicting anything
    with pytest.raises(FileExistsError, match="--overwrite"):
        ev.validate(root, ext, out, recalibrate="intercept")
    assert len(calls) == 1
