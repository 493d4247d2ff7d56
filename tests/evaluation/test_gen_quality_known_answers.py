"""Known-answer checks of the generation-quality suite on phantom TLCR patches.

Real held-out patches play a perfect generator; against them: a Gaussian-blurred copy of the same patches, the
per-mask mean image (each label region filled with the training mean of that region), noise inside the same
masks, and a "generator" that returns training patches. The suite must rank the real patches best on C2ST and
FRD, rank blur, mean and noise worse, and flag the copier with a copy rate near 1 although its FRD is excellent.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from neonet_toolkit.demo.phantom import make_phantom_patches
from neonet_toolkit.evaluation.gen_quality import PatchSet, RealReference, quality_report, reference_report

pytest.importorskip("radiomics", reason="the FRD feature space needs pyradiomics (README: Install)")

SPACING = (1.5, 1.5, 3.0)


@pytest.fixture(scope="module")
def suite():
    im, lab, y = make_phantom_patches(72, seed=5)
    p = np.random.default_rng(1).permutation(72)
    im, lab, y = im[p], lab[p], y[p]
    tr, va, g = np.arange(32), np.arange(32, 52), np.arange(52, 72)
    ref = RealReference.build(PatchSet.from_patches("train", im[tr], lab[tr], y[tr]),
                              PatchSet.from_patches("val", im[va], lab[va], y[va]), SPACING, bin_width=0.25)
    gi, gl = im[g], lab[g]
    roi, tum = gl[:, 0] > 0, gl[:, 1] > 0
    t_im, t_lab = im[tr][:, 0], lab[tr]
    tum_mean = t_im[t_lab[:, 1] > 0].mean()
    organ_mean = t_im[(t_lab[:, 0] > 0) & (t_lab[:, 1] == 0)].mean()
    roi_vals = t_im[t_lab[:, 0] > 0]
    rng = np.random.default_rng(0)
    controls = {
        "real": gi[:, 0],
        "blur": np.stack([gaussian_filter(x, 1.0) for x in gi[:, 0]]) * roi,
        "mean": np.where(tum, tum_mean, np.where(roi, organ_mean, 0.0)),
        "noise": rng.normal(roi_vals.mean(), roi_vals.std(), gi[:, 0].shape) * roi,
    }
    sets = {k: PatchSet(k, v, roi, tum, y[g]) for k, v in controls.items()}
    sets["copier"] = PatchSet.from_patches("copier", im[tr][:20], lab[tr][:20], y[tr][:20],
                                           ids=list(ref.train.ids[:20]))
    return ref, {k: quality_report(ref, s) for k, s in sets.items()}


def test_real_patches_rank_best_and_controls_worse(suite):
    ref, r = suite
    auc = {k: v["c2st"]["pooled"]["auc"] for k, v in r.items()}
    frd = {k: v["frd"]["value"] for k, v in r.items()}
    for bad in ("blur", "mean", "noise"):
        assert auc[bad] > 0.95 > auc["real"] + 0.2, auc
        assert frd[bad] > 10 * frd["real"], frd
        assert r[bad]["prdc"]["precision"] < 0.2 < r["real"]["prdc"]["precision"]
    assert auc["real"] <= 0.75
    for c, row in r["real"]["c2st"]["per_class"].items():
        assert row["auc"] is not None and row["ci"][0] <= 0.5 + 1e-9, (c, row)
    ref_row = reference_report(ref)  # real validation vs training: the same order of FRD as the real candidates
    assert ref_row["frd"]["value"] < 5 * frd["real"] and frd["real"] < 5 * ref_row["frd"]["value"]


def test_copier_is_flagged_although_its_frd_is_excellent(suite):
    _, r = suite
    assert r["copier"]["copy_rate"] >= 0.95
    assert r["real"]["copy_rate"] <= 0.25
    assert r["copier"]["frd"]["value"] <= r["real"]["frd"]["value"] * 1.5  # the FRD alone would pass it
    assert r["copier"]["nearest"]["candidate_ncc_median"] == pytest.approx(1.0)


def test_cis_contain_their_point_estimates(suite):
    _, r = suite
    for row in r.values():
        for key in ("frd", "kid"):
            lo, hi = row[key]["ci"]
            assert lo <= row[key]["value"] <= hi
        assert row["frd"]["ci"][0] >= 0.0
