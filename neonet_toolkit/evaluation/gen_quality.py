"""Generation quality that no blur or copy can fool: C2ST realism, FRD/KID, precision/recall/density/coverage
and memorisation (copy rate), for one synthetic set against a fold's real patches.

Sets (all TLCR patches, channel 0 = the organ∪tumour-masked image, inside the ROI = label channel 0):

* ``train``: the fold's real training patches, which the generator imitated;
* ``val``: the fold's real validation patches, never seen by the generator: the reference for "as real as
  a held-out patient";
* ``candidate``: the synthetic set (or, in the known-answer checks, a control: blurred copies, per-mask mean
  images, noise, copies of training patches).

Feature space: pyradiomics first-order and texture features (GLCM, GLRLM, GLSZM, GLDM, NGTDM; no shape,
because a synthetic patch shares its mask with the case it was conditioned on) inside the ROI with a fixed bin
width on the z-scored patches, plus first-order features inside the tumour; standardised with the training
set's mean and SD (values clipped to ±20 SD so one degenerate feature cannot dominate). This follows the
Fréchet Radiomics Distance (FRD) of Osuala et al. (2024): a Fréchet distance in a standardised radiomics space.

Metrics (``quality_report``):

* **C2ST** (headline): a logistic regression (L2, strength chosen by inner CV) is trained to tell real training
  patches from one half of the synthetic patches of a class and scored on the *held-out* real validation patches
  against the other half (two halves cross-fitted, so every synthetic patch is scored once by a model that never
  saw it; validation patches get the mean of both models). AUC with a DeLong CI, per PNI class and pooled.
  0.5: indistinguishable; 1.0: every synthetic patch is recognisable.
* **FRD** and **KID** (cubic polynomial kernel, unbiased MMD²) against the training set, with CIs from
  subsets without replacement (delete-d jackknife: ``var = b/d · var(θ_subsets)`` for subsets of ``b`` of ``n``
  patches, ``d = n - b``), centred on the full-set estimate. FRD, like FID, is biased upwards for small sets:
  compare rows of similar size, or use KID, whose estimator is unbiased.
* **Precision, recall, density, coverage** (Kynkäänniemi 2019; Naeem 2020; k-NN radii, k = 5) of the candidate
  against the training set.
* **Memorisation**: for every candidate patch the nearest training patch by normalised cross-correlation of the
  *texture residual* (the image minus the mean of each of its label regions, over the ROI voxels the two patches
  share; the mask shape, which a conditioned sample shares with its source case by design, is removed), and by
  distance in the feature space. The same for every real validation patch. The **copy rate** is the fraction of
  candidate patches closer (image space) to a training patch than the ``copy_quantile`` (5 %) of the real
  validation patches' nearest-neighbour distances; a generator as novel as a new patient scores about 5 %.

Known-answer checks (``tests/evaluation/test_gen_quality_known_answers.py``): on phantom patches the suite ranks
real held-out patches best on C2ST and FRD, ranks blur, per-mask mean and noise worse, and flags a generator that
returns training patches with a copy rate near 1 although its FRD is excellent.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from neonet_toolkit.preprocessing.radiomics_features import (
    feature_matrix,
    make_extractor,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.io import save_figure

logger = logging.getLogger(__name__)

CLIP_SD = 20.0


# ----------------------------------------------------------------------------- patch sets
@dataclass
class PatchSet:
    """Channel-0 images (N, D, H, W), ROI and tumour masks, PNI classes and ids of a set of TLCR patches."""
    name: str
    images: np.ndarray
    rois: np.ndarray
    tumours: np.ndarray
    classes: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, np.float32)
        self.rois = np.asarray(self.rois) > 0
        self.tumours = np.asarray(self.tumours) > 0
        self.classes = np.asarray(self.classes, int).reshape(-1)
        if not self.ids:
            self.ids = [f"{self.name}_{i}" for i in range(len(self.images))]
        n = len(self.images)
        if not (len(self.rois) == len(self.tumours) == len(self.classes) == len(self.ids) == n):
            raise ValueError(f"patch set {self.name!r}: images, masks, classes and ids differ in length.")

    @classmethod
    def from_patches(cls, name: str, images: np.ndarray, labels: np.ndarray, classes, ids=()) -> "PatchSet":
        """From TLCR arrays: images (N, 2, D, H, W) and labels (N, 2, D, H, W) as stored on disk."""
        return cls(name, images[:, 0], labels[:, 0], labels[:, 1], classes, list(ids))

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "PatchSet":
        idx = np.asarray(idx, int)
        return PatchSet(self.name, self.images[idx], self.rois[idx], self.tumours[idx], self.classes[idx],
                        [self.ids[i] for i in idx])


# ----------------------------------------------------------------------------- feature space
class FeatureSpace:
    """Radiomics features of patch sets, standardised on a reference (the real training) set."""

    def __init__(self, spacing_xyz: Sequence[float], bin_width: float):
        self.spacing = [float(s) for s in spacing_xyz]
        self.roi_extractor = make_extractor(bin_width=bin_width)
        self.tumour_extractor = make_extractor(("firstorder",), bin_width=bin_width)
        self.names: list[str] | None = None
        self.mean = self.scale = None

    def raw(self, ps: PatchSet) -> tuple[list[str], np.ndarray]:
        n1, x1 = feature_matrix(ps.images, ps.rois, self.spacing, self.roi_extractor, f"features {ps.name} (ROI)")
        n2, x2 = feature_matrix(ps.images, ps.tumours, self.spacing, self.tumour_extractor,
                                f"features {ps.name} (tumour)")
        return [f"roi_{n}" for n in n1] + [f"tumour_{n}" for n in n2], np.concatenate([x1, x2], 1)

    def fit(self, reference: PatchSet) -> np.ndarray:
        names, x = self.raw(reference)
        keep = np.isfinite(x).all(0) & (np.nanstd(x, 0) > 1e-12)
        self.names = [n for n, k in zip(names, keep) if k]
        self.mean, self.scale = x[:, keep].mean(0), x[:, keep].std(0)
        return self._standardise(x[:, keep])

    def transform(self, ps: PatchSet) -> np.ndarray:
        if self.names is None:
            raise RuntimeError("FeatureSpace.transform before fit.")
        names, x = self.raw(ps)
        col = {n: i for i, n in enumerate(names)}
        out = np.array([[row[col[n]] if n in col else np.nan for n in self.names] for row in x], float)
        out = out.reshape(len(ps), len(self.names))
        # a feature the candidate cannot produce (e.g. texture of a constant image) sits at the clip bound
        return np.nan_to_num(self._standardise(out), nan=CLIP_SD, posinf=CLIP_SD, neginf=-CLIP_SD)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.scale, -CLIP_SD, CLIP_SD)


# ----------------------------------------------------------------------------- distances between feature sets
def frechet_from_moments(mu1, sigma1, mu2, sigma2) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½)``, via symmetric eigendecompositions (stable for
    the rank-deficient covariances of few samples in many dimensions)."""
    mu1, mu2 = np.asarray(mu1, float), np.asarray(mu2, float)
    s1, s2 = np.atleast_2d(sigma1).astype(float), np.atleast_2d(sigma2).astype(float)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits (sample mean, unbiased covariance) of the rows of x and y."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    return frechet_from_moments(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3) -> np.ndarray:
    """``(a·b / d + 1)^degree``, the KID kernel (Bińkowski et al. 2018)."""
    return (a @ b.T / a.shape[1] + 1.0) ** degree


def kid(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (Kernel Inception Distance, in any feature space)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 samples in each set.")
    kxx, kyy, kxy = polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree), polynomial_kernel(x, y, degree)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def subset_ci(stat: Callable[[np.ndarray, np.ndarray], float], x: np.ndarray, y: np.ndarray, n_subsets: int = 50,
              fraction: float = 0.5, alpha: float = 0.05, seed: int = 0, lower: float | None = None) -> dict:
    """Point estimate on the full sets and a (1 - alpha) CI from subsets without replacement.

    Each replicate draws ``b = round(fraction · n)`` rows of each set without replacement (no duplicated
    patches, which would bias a Fréchet distance); the delete-d jackknife variance of the full-set estimate
    is ``b/d · var(θ_subsets)`` with ``d = n - b`` (Shao & Wu 1989), and the CI is the point estimate
    ± z·SE, clipped at ``lower``."""
    if not 0 < fraction < 1:
        raise ValueError(f"subset fraction must be in (0, 1), got {fraction}.")
    if len(x) < 2 or len(y) < 2:
        return {"value": None, "ci": None, "se": None, "n": [len(x), len(y)], "n_subsets": 0,
                "reason": "needs at least 2 patches in each set"}
    rng = np.random.default_rng(seed)
    point = float(stat(x, y))
    bx, by = max(2, int(round(fraction * len(x)))), max(2, int(round(fraction * len(y))))
    if bx >= len(x) or by >= len(y):
        return {"value": point, "ci": None, "se": None, "n": [len(x), len(y)], "n_subsets": 0}
    reps = np.array([stat(x[rng.choice(len(x), bx, replace=False)], y[rng.choice(len(y), by, replace=False)])
                     for _ in range(int(n_subsets))])
    f = (bx / len(x) + by / len(y)) / 2
    se = math.sqrt(f / (1 - f) * reps.var(ddof=1))
    z = float(norm.ppf(1 - alpha / 2))
    lo, hi = point - z * se, point + z * se
    if lower is not None:
        lo = max(lo, lower)
    return {"value": point, "ci": [float(lo), float(hi)], "se": float(se), "n": [len(x), len(y)],
            "n_subsets": int(n_subsets), "subset_sizes": [bx, by], "method": "delete-d jackknife (without replacement)"}


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020) with k-NN balls.

    A real point's ball has the radius of its k-th nearest *other* real point (fakes likewise for recall)."""
    real, fake = np.atleast_2d(real), np.atleast_2d(fake)
    k = int(min(k, len(real) - 1, len(fake) - 1))
    if k < 1:
        raise ValueError("precision/recall need at least 2 real and 2 fake samples.")
    d_rr = _pairwise(real, real)
    d_ff = _pairwise(fake, fake)
    d_rf = _pairwise(real, fake)  # (n_real, n_fake)
    r_real = np.sort(d_rr, 1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(d_ff, 1)[:, k]
    inside = d_rf <= r_real[:, None]  # fake j inside real i's ball
    return {"precision": float(inside.any(0).mean()),
            "recall": float((d_rf <= r_fake[None, :]).any(1).mean()),
            "density": float(inside.sum(0).mean() / k),
            "coverage": float((d_rf.min(1) <= r_real).mean()), "k": k}


def _prdc(real: np.ndarray, fake: np.ndarray) -> dict:
    if min(len(real), len(fake)) < 2:
        return {"precision": None, "recall": None, "density": None, "coverage": None, "k": 0,
                "reason": "needs at least 2 patches in each set"}
    return prdc(real, fake)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


# ----------------------------------------------------------------------------- memorisation
def texture_residual(ps: PatchSet) -> np.ndarray:
    """Each image minus the mean of each of its label regions (tumour; ROI outside the tumour); 0 outside the ROI."""
    out = np.zeros_like(ps.images, dtype=np.float64)
    for i, (im, roi, tum) in enumerate(zip(ps.images, ps.rois, ps.tumours)):
        for region in (tum & roi, roi & ~tum):
            if region.any():
                out[i][region] = im[region] - im[region].mean()
    return out


def residual_ncc(query: PatchSet, train: PatchSet) -> np.ndarray:
    """(n_query, n_train) normalised cross-correlation of texture residuals over the ROI voxels both patches share."""
    a = texture_residual(query).reshape(len(query), -1)
    b = texture_residual(train).reshape(len(train), -1)
    ma = query.rois.reshape(len(query), -1).astype(np.float64)
    mb = train.rois.reshape(len(train), -1).astype(np.float64)
    num = a @ b.T  # residuals vanish outside each ROI, so this sums over the shared voxels
    den = np.sqrt(((a ** 2) @ mb.T) * (ma @ (b ** 2).T))
    with np.errstate(invalid="ignore", divide="ignore"):
        ncc = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return ncc


def nearest_neighbours(query: PatchSet, train: PatchSet, query_features: np.ndarray | None = None,
                       train_features: np.ndarray | None = None, exclude_same_id: bool = False) -> dict:
    """For every query patch: the most similar training patch (residual NCC) and the nearest in feature space."""
    ncc = residual_ncc(query, train)
    if exclude_same_id:  # a real patch is not its own neighbour
        for i, qid in enumerate(query.ids):
            ncc[i, [j for j, t in enumerate(train.ids) if t == qid]] = -np.inf
    j = ncc.argmax(1)
    out = {"ncc": ncc.max(1), "ncc_neighbour": [train.ids[x] for x in j], "image_distance": 1.0 - ncc.max(1)}
    if query_features is not None and train_features is not None:
        d = _pairwise(query_features, train_features)
        out["feature_distance"] = d.min(1)
        out["feature_neighbour"] = [train.ids[x] for x in d.argmin(1)]
    return out


def copy_rate(candidate_distance: np.ndarray, reference_distance: np.ndarray, quantile: float = 0.05) -> dict:
    """Fraction of candidate patches nearer to a training patch than the ``quantile`` of the real held-out
    patches' nearest-neighbour distances (Wilson 95 % CI)."""
    thr = float(np.quantile(np.asarray(reference_distance, float), quantile))
    k = int((np.asarray(candidate_distance) < thr).sum())
    n = len(candidate_distance)
    return {"rate": k / n if n else float("nan"), "ci": list(stats.wilson_ci(k, n)), "n_copies": k, "n": n,
            "threshold": thr, "quantile": quantile}


# ----------------------------------------------------------------------------- C2ST
def _discriminator(seed: int, n_min: int) -> LogisticRegressionCV:
    return LogisticRegressionCV(Cs=np.logspace(-3, 2, 8).tolist(), cv=max(2, min(3, n_min)), max_iter=2000,
                                scoring="roc_auc", random_state=seed)


def c2st(train_features: np.ndarray, val_features: np.ndarray, cand_features: np.ndarray, seed: int = 0) -> dict:
    """Held-out C2ST AUC: real training vs one half of the candidates trains, real validation vs the other half
    is scored; the halves swap roles. AUC of candidate (positive) vs real validation with a DeLong CI."""
    n_c, n_v = len(cand_features), len(val_features)
    if n_c < 4 or n_v < 2 or len(train_features) < 2:
        return {"auc": None, "ci": None, "n_real": n_v, "n_synthetic": n_c,
                "reason": "too few patches (needs >= 4 synthetic, >= 2 validation and >= 2 training patches)"}
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_c)
    halves = [perm[: n_c // 2], perm[n_c // 2:]]
    cand_scores = np.empty(n_c)
    val_scores = np.zeros(n_v)
    for h in (0, 1):
        fit_idx, test_idx = halves[h], halves[1 - h]
        x = np.concatenate([train_features, cand_features[fit_idx]])
        y = np.r_[np.zeros(len(train_features)), np.ones(len(fit_idx))]
        scaler = StandardScaler().fit(x)
        clf = _discriminator(seed, int(min(np.bincount(y.astype(int)))))
        clf.fit(scaler.transform(x), y)
        cand_scores[test_idx] = clf.decision_function(scaler.transform(cand_features[test_idx]))
        val_scores += clf.decision_function(scaler.transform(val_features)) / 2
    y_test = np.r_[np.zeros(n_v), np.ones(n_c)]
    ci = stats.delong_ci(y_test, np.r_[val_scores, cand_scores])
    return {"auc": ci["auc"], "ci": [ci["ci_low"], ci["ci_high"]], "n_real": n_v, "n_synthetic": n_c}


def c2st_per_class(fs_train: np.ndarray, y_train: np.ndarray, fs_val: np.ndarray, y_val: np.ndarray,
                   fs_cand: np.ndarray, y_cand: np.ndarray, seed: int = 0) -> dict:
    """C2ST within each PNI class present in the candidate set (same class, hence the same mask law, on both
    sides), and pooled over classes."""
    out = {"per_class": {}, "pooled": c2st(fs_train, fs_val, fs_cand, seed)}
    for c in sorted(set(int(v) for v in y_cand)):
        out["per_class"][str(c)] = c2st(fs_train[y_train == c], fs_val[y_val == c], fs_cand[y_cand == c], seed + c + 1)
    return out


# ----------------------------------------------------------------------------- the report of one candidate set
@dataclass
class RealReference:
    """The real sets and their features, computed once per fold and shared by every candidate set."""
    train: PatchSet
    val: PatchSet
    space: FeatureSpace
    f_train: np.ndarray
    f_val: np.ndarray
    val_nn: dict

    @classmethod
    def build(cls, train: PatchSet, val: PatchSet, spacing_xyz, bin_width: float) -> "RealReference":
        space = FeatureSpace(spacing_xyz, bin_width)
        f_train = space.fit(train)
        f_val = space.transform(val)
        return cls(train, val, space, f_train, f_val, nearest_neighbours(val, train, f_val, f_train))


def quality_report(ref: RealReference, cand: PatchSet, copy_quantile: float = 0.05, n_subsets: int = 50,
                   subset_fraction: float = 0.5, seed: int = 0, f_cand: np.ndarray | None = None) -> dict:
    """Every metric of the suite for one candidate set (see the module docstring)."""
    f = ref.space.transform(cand) if f_cand is None else f_cand
    nn = nearest_neighbours(cand, ref.train, f, ref.f_train)
    img_copy = copy_rate(nn["image_distance"], ref.val_nn["image_distance"], copy_quantile)
    feat_copy = copy_rate(nn["feature_distance"], ref.val_nn["feature_distance"], copy_quantile)
    return {
        "n_candidate": len(cand), "n_train": len(ref.train), "n_val": len(ref.val),
        "c2st": c2st_per_class(ref.f_train, ref.train.classes, ref.f_val, ref.val.classes, f, cand.classes, seed),
        "frd": subset_ci(frechet_distance, ref.f_train, f, n_subsets, subset_fraction, seed=seed, lower=0.0),
        "kid": subset_ci(kid, ref.f_train, f, n_subsets, subset_fraction, seed=seed),
        "prdc": _prdc(ref.f_train, f),
        "copy_rate": img_copy["rate"], "copy": img_copy, "copy_feature_space": feat_copy,
        "nearest": {"candidate_ids": list(cand.ids), "ncc": nn["ncc"].tolist(), "ncc_neighbour": nn["ncc_neighbour"],
                    "feature_distance": nn["feature_distance"].tolist(),
                    "val_ncc_median": float(np.median(ref.val_nn["ncc"])),
                    "candidate_ncc_median": float(np.median(nn["ncc"]))},
        "n_features": len(ref.space.names or []),
    }


def reference_report(ref: RealReference, n_subsets: int = 50, subset_fraction: float = 0.5, seed: int = 0) -> dict:
    """Real validation vs real training on the same metrics (no C2ST or copy rate: the validation set is the
    reference those two are measured against)."""
    return {"n_candidate": len(ref.val), "n_train": len(ref.train),
            "frd": subset_ci(frechet_distance, ref.f_train, ref.f_val, n_subsets, subset_fraction, seed=seed,
                             lower=0.0),
            "kid": subset_ci(kid, ref.f_train, ref.f_val, n_subsets, subset_fraction, seed=seed),
            "prdc": _prdc(ref.f_train, ref.f_val),
            "nearest": {"val_ncc_median": float(np.median(ref.val_nn["ncc"]))}}


def save_copy_montage(ref: RealReference, cand: PatchSet, report: dict, path: Path, axis: int = 0,
                      n: int = 4, title: str = "") -> Path:
    """The ``n`` candidate patches most similar to a training patch, beside that training patch (the slice
    through the tumour centre along ``axis``), with their residual NCC."""
    ncc = np.asarray(report["nearest"]["ncc"])
    order = np.argsort(-ncc)[:n]
    by_id = {t: i for i, t in enumerate(ref.train.ids)}
    fig = Figure(figsize=(5, 2.5 * max(1, len(order))))
    axes = fig.subplots(max(1, len(order)), 2, squeeze=False)
    for row, i in enumerate(order):
        j = by_id[report["nearest"]["ncc_neighbour"][i]]
        tum = cand.tumours[i]
        area = np.moveaxis(tum, axis, 0).reshape(tum.shape[axis], -1).sum(1)
        k = int(np.argmax(area)) if area.any() else tum.shape[axis] // 2
        roi = cand.rois[i]
        lo, hi = np.percentile(cand.images[i][roi], [1, 99]) if roi.any() else (0.0, 1.0)
        for col, (img, lab) in enumerate(((cand.images[i], f"{cand.ids[i]}"),
                                          (ref.train.images[j], f"nearest training {ref.train.ids[j]}"))):
            ax = axes[row, col]
            ax.imshow(np.take(img, k, axis=axis), cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{lab}" + (f"\nNCC {ncc[i]:.3f}" if col == 0 else ""), fontsize=7)
            ax.axis("off")
    fig.suptitle(title or "closest synthetic–training pairs (texture-residual NCC)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
