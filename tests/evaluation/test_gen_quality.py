"""The generation-quality metrics against independent computations on small hand-made data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm

from neonet_toolkit.evaluation.gen_quality import (
    PatchSet,
    c2st,
    copy_rate,
    frechet_distance,
    frechet_from_moments,
    kid,
    nearest_neighbours,
    prdc,
    residual_ncc,
    subset_ci,
    texture_residual,
)


# ----------------------------------------------------------------------------- Fréchet distance
def test_frechet_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((sd1 - sd2) ** 2).sum()  # 1 + 4 + 4 + 1 = 10
    assert frechet_from_moments(mu1, np.diag(sd1 ** 2), mu2, np.diag(sd2 ** 2)) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(10.0)


def test_frechet_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert frechet_from_moments(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal([0, 0, 0], [1, 1, 1], size=(20000, 3))
    y = rng.normal([1, 0, 0], [2, 1, 1], size=(20000, 3))
    assert frechet_distance(x, y) == pytest.approx(1.0 + 1.0, rel=0.05)


# ----------------------------------------------------------------------------- KID
def test_kid_matches_an_explicit_double_loop():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 3)), rng.normal(1, 1, size=(5, 3))

    def k(a, b):
        return (np.dot(a, b) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    assert kid(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_is_unbiased_at_small_n_where_frechet_is_not():
    """Mean of 300 ten-sample estimates vs a 3000-sample estimate: KID within 3 SE, FD far above its value."""
    rng = np.random.default_rng(3)
    d = 4
    big_kid = kid(rng.normal(size=(3000, d)), rng.normal(0.5, 1, size=(3000, d)))
    small = [kid(rng.normal(size=(10, d)), rng.normal(0.5, 1, size=(10, d))) for _ in range(300)]
    assert abs(np.mean(small) - big_kid) < 3 * np.std(small) / np.sqrt(300)
    fd_small = [frechet_distance(rng.normal(size=(10, d)), rng.normal(0.5, 1, size=(10, d))) for _ in range(300)]
    assert np.mean(fd_small) > 2 * (d * 0.25)  # population FD = |Δμ|² = 1.0; small-sample mean ≈ 2.8


def test_subset_ci_contains_the_point_estimate_and_covers_the_population_kid():
    rng = np.random.default_rng(4)
    d = 4
    pop = kid(rng.normal(size=(3000, d)), rng.normal(0.5, 1, size=(3000, d)))
    covered = 0
    for r in range(120):
        x, y = rng.normal(size=(30, d)), rng.normal(0.5, 1, size=(30, d))
        res = subset_ci(kid, x, y, n_subsets=40, seed=r)
        assert res["ci"][0] <= res["value"] <= res["ci"][1]
        covered += res["ci"][0] <= pop <= res["ci"][1]
    assert covered / 120 >= 0.85  # nominal 95 %; measured 0.955 over 200 replicates
    fd = subset_ci(frechet_distance, x, y, seed=0, lower=0.0)
    assert fd["ci"][0] <= fd["value"] <= fd["ci"][1] and fd["ci"][0] >= 0.0


# ----------------------------------------------------------------------------- precision / recall / density / coverage
def test_prdc_by_hand_on_a_1d_toy_cloud():
    real = np.array([[0.0], [1.0], [2.0], [10.0]])
    fake = np.array([[0.5], [5.0], [20.0]])
    # k = 1: real radii 1, 1, 1, 8; fake radii 4.5, 4.5, 15
    r = prdc(real, fake, k=1)
    assert r["precision"] == pytest.approx(2 / 3)  # 0.5 in 0's ball, 5 in 10's ball, 20 in none
    assert r["recall"] == pytest.approx(1.0)  # 10 lies in 20's ball (radius 15)
    assert r["density"] == pytest.approx((2 + 1 + 0) / 3)
    assert r["coverage"] == pytest.approx(3 / 4)  # 2's nearest fake (0.5) is 1.5 > radius 1


def test_prdc_separates_fidelity_from_diversity():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(200, 2))
    same = prdc(real, rng.normal(size=(200, 2)))
    collapsed = prdc(real, rng.normal(0, 0.05, size=(200, 2)))  # faithful but one mode
    off = prdc(real, rng.normal(6, 1, size=(200, 2)))
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.2 and collapsed["coverage"] < 0.3
    assert off["precision"] < 0.05 and off["coverage"] < 0.05


# ----------------------------------------------------------------------------- memorisation
def _blob_set(name, rng, n, shape=(6, 8, 8), offset=0):
    rois = np.zeros((n,) + shape, bool)
    rois[:, 1:5, 1:7, 1:7] = True
    tum = np.zeros_like(rois)
    tum[:, 2:4, 3:5, 3:5] = True
    img = rng.normal(size=(n,) + shape) * rois + 2.0 * rois - 1.0 * tum
    return PatchSet(name, img, rois, tum, np.arange(n) % 2, [f"{name}_{i + offset}" for i in range(n)])


def test_residual_ncc_matches_a_per_pair_computation():
    rng = np.random.default_rng(6)
    a, b = _blob_set("a", rng, 3), _blob_set("b", rng, 4)
    b.rois[1, 1, 1, :] = False  # a pair with a smaller shared ROI
    ra, rb = texture_residual(a), texture_residual(b)
    got = residual_ncc(a, b)
    for i in range(3):
        for j in range(4):
            m = a.rois[i] & b.rois[j]
            u, v = ra[i][m], rb[j][m]
            assert got[i, j] == pytest.approx((u * v).sum() / np.sqrt((u * u).sum() * (v * v).sum()), rel=1e-9)
    # region means are removed: a copy shifted by a constant per region is still a perfect copy
    c = PatchSet("c", a.images + 5.0 * a.rois + 3.0 * a.tumours, a.rois, a.tumours, a.classes)
    assert np.diag(residual_ncc(c, a)) == pytest.approx(1.0)


def test_copy_rate_finds_planted_copies():
    rng = np.random.default_rng(7)
    train, val, fresh = _blob_set("train", rng, 20), _blob_set("val", rng, 20), _blob_set("fresh", rng, 15)
    planted = train.subset([0, 3, 5, 8, 11])
    planted.images = planted.images + rng.normal(0, 0.05, planted.images.shape) * planted.rois  # near-copies
    cand = PatchSet("cand", np.concatenate([fresh.images, planted.images]),
                    np.concatenate([fresh.rois, planted.rois]), np.concatenate([fresh.tumours, planted.tumours]),
                    np.r_[fresh.classes, planted.classes])
    val_nn = nearest_neighbours(val, train)
    nn = nearest_neighbours(cand, train)
    res = copy_rate(nn["image_distance"], val_nn["image_distance"], 0.05)
    flagged = np.flatnonzero(nn["image_distance"] < res["threshold"])
    assert {15, 16, 17, 18, 19} <= set(flagged)  # every planted copy; a novel patch is flagged by chance only
    assert res["n_copies"] == len(flagged) and res["rate"] == pytest.approx(len(flagged) / 20)
    fresh_only = copy_rate(nn["image_distance"][:15], val_nn["image_distance"], 0.05)
    assert fresh_only["rate"] <= 0.3 < res["rate"]
    assert copy_rate(nn["image_distance"][15:], val_nn["image_distance"], 0.05)["rate"] == 1.0
    assert [nn["ncc_neighbour"][i] for i in range(15, 20)] == ["train_0", "train_3", "train_5", "train_8", "train_11"]


# ----------------------------------------------------------------------------- C2ST
def test_c2st_is_near_chance_for_the_same_law_and_near_one_for_a_shifted_one():
    rng = np.random.default_rng(8)
    d = 6
    train, val = rng.normal(size=(40, d)), rng.normal(size=(30, d))
    same = c2st(train, val, rng.normal(size=(30, d)), seed=0)
    shifted = c2st(train, val, rng.normal(1.5, 1, size=(30, d)), seed=0)
    assert same["auc"] < 0.75 and same["ci"][0] < 0.5 < same["ci"][1]
    assert shifted["auc"] > 0.95 and shifted["ci"][0] > 0.8
    assert c2st(train, val[:1], rng.normal(size=(30, d)))["auc"] is None  # too few held-out real patches
