"""External-site demo cohort: phantom patients from other seeds, seen through another scanner.

``make_external_site`` writes a cohort that a validation command can read as an external site
(issue 23, section 3): the nnU-Net raw layout with ``imagesTs/``, ``labelsTs/``, ``dataset.json`` and a
``case_labels.csv`` with the columns ``case_id, PNI, site, scanner``, plus ``external_site.json`` (every
shift parameter, the seeds, the per-case seeds and shapes).

The patients are the phantom's (:func:`neonet_toolkit.demo.phantom.make_case`, same anatomy and PNI
cue law), drawn from seeds that a training phantom never uses: case ``i`` of seed ``s`` comes from
``numpy.random.default_rng([s, EXTERNAL_SEED_TAG, i])`` (three-word entropy), while
``make_phantom_dataset(seed=s)`` draws its whole dataset from ``default_rng(s)`` (one word) and its label
noise from ``default_rng([s, 1])``. Each case is thus reproducible from its own seed alone. The site's
name does not enter the seed: two cohorts of one seed hold the same patients, so an unshifted and a
shifted cohort form a paired comparison where only the shift differs (the spacing shift excepted: it
changes the voxel grid the patients are drawn on).

The shift (:class:`SiteShift`), applied in this order to each phantom image:

* ``spacing_factors`` (fx, fy, fz): voxel spacing ``spacing * f``, grid ``round(shape / f)``: the same
  physical field of view and anatomy (in mm) on another grid; the labels are drawn on the same grid.
* ``intensity_scale`` k: the image is multiplied by k (another scanner gain / units).
* ``bias_amplitude`` b: a multiplicative linear field ``1 + b * t`` with ``t`` the position along
  ``bias_direction`` (mm), rescaled so that ``t`` runs from -1/2 to +1/2 across the organ (liver, tumour
  and vessel labels): the organ's intensity rises by the fraction b (peak to peak) from one side to the
  other (a coil-sensitivity gradient). The field is floored at 0.05 outside the organ.
* ``noise`` s: extra Rician noise of standard deviation ``s * 800 * k`` per channel (``s`` is a fraction of
  the unshifted liver intensity, 800; the phantom's own noise is 0.05), which raises the background's
  standard deviation.

``prevalence`` sets the fraction of PNI-positive cases: ``round(n * prevalence)``, kept within 1..n-1 (within
one case of the stated fraction). With no shift (``shift=None`` or all factors neutral) the images are the
phantom generator's own output, unchanged.
"""
from __future__ import annotations

import csv
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.demo.dicom_series import dataset_test_cases_to_dicom
from neonet_toolkit.demo.phantom import DEFAULT_LABELS, _write_nifti, check_cue, label_map, make_case
from neonet_toolkit.utilities.io import save_json
from neonet_toolkit.version import __version__

logger = logging.getLogger(__name__)

EXTERNAL_SITE_FILE = "external_site.json"
CASE_LABELS_FILE = "case_labels.csv"
EXTERNAL_SEED_TAG = 0x5E7E23  # second word of every external case's seed: never in a training phantom's seed
DEFAULT_PREVALENCE = 1 / 3  # the training phantom's
DEFAULT_N_CASES = 40
PHANTOM_LIVER_INTENSITY = 800.0  # make_case scales the unshifted liver to ~1.0 * 800
BIAS_FIELD_FLOOR = 0.05
MIN_GRID = 8  # voxels per axis after a spacing shift
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class SiteShift:
    """A controlled acquisition shift (see the module docstring for each parameter's definition)."""

    intensity_scale: float = 1.0
    bias_amplitude: float = 0.0
    spacing_factors: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 0.0
    bias_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def __post_init__(self):
        k = float(self.intensity_scale)
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"intensity scale must be a positive number (--shift-intensity), "
                             f"got {self.intensity_scale}.")
        b = float(self.bias_amplitude)
        if not (math.isfinite(b) and 0.0 <= b < 1.0):
            raise ValueError(f"bias amplitude must be in [0, 1) (a fraction of the organ intensity, peak to peak; "
                             f"--shift-bias), got {self.bias_amplitude}.")
        f = tuple(float(v) for v in self.spacing_factors)
        if len(f) != 3 or not all(math.isfinite(v) and v > 0 for v in f):
            raise ValueError(f"spacing factors must be three positive numbers (--shift-spacing FX FY FZ), "
                             f"got {self.spacing_factors}.")
        s = float(self.noise)
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise ValueError(f"noise must be in [0, 1] (a fraction of the liver intensity; --shift-noise), "
                             f"got {self.noise}.")
        d = np.asarray(self.bias_direction, float)
        if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
            raise ValueError(f"bias direction must be a non-zero 3-vector (x, y, z), got {self.bias_direction}.")
        object.__setattr__(self, "intensity_scale", k)
        object.__setattr__(self, "bias_amplitude", b)
        object.__setattr__(self, "spacing_factors", f)
        object.__setattr__(self, "noise", s)
        object.__setattr__(self, "bias_direction", tuple(float(v) for v in d / np.linalg.norm(d)))

    @property
    def neutral(self) -> bool:
        return (self.intensity_scale == 1.0 and self.bias_amplitude == 0.0 and self.noise == 0.0
                and self.spacing_factors == (1.0, 1.0, 1.0))

    def as_dict(self) -> dict:
        return {"intensity_scale": self.intensity_scale, "bias_amplitude": self.bias_amplitude,
                "bias_direction_xyz": list(self.bias_direction), "spacing_factors_xyz": list(self.spacing_factors),
                "noise": self.noise, "neutral": self.neutral}


def check_prevalence(prevalence: float) -> float:
    p = float(prevalence)
    if not (math.isfinite(p) and 0.0 < p < 1.0):
        raise ValueError(f"prevalence must be strictly between 0 and 1 (--prevalence), got {prevalence}.")
    return p


def n_positive(n_cases: int, prevalence: float) -> int:
    """``round(n * prevalence)`` kept within 1..n-1, so both classes exist (always within one case of n * p)."""
    return int(min(max(round(n_cases * check_prevalence(prevalence)), 1), n_cases - 1))


def case_seed(seed: int, index: int) -> list[int]:
    """The seed (``numpy`` entropy) of external case ``index``: disjoint from a training phantom's ``seed``."""
    return [int(seed), EXTERNAL_SEED_TAG, int(index)]


def organ_coordinate(organ_zyx: np.ndarray, spacing_xyz: Sequence[float],
                     direction_xyz: Sequence[float]) -> np.ndarray:
    """Position along ``direction_xyz`` (mm) rescaled so that it runs from -1/2 to +1/2 across ``organ_zyx``."""
    if not organ_zyx.any():
        raise ValueError("the organ mask is empty: no bias field can be referenced to it")
    d = np.asarray(direction_xyz, float)
    d = d / np.linalg.norm(d)
    axes = [np.arange(n) * float(s) for n, s in zip(organ_zyx.shape, tuple(spacing_xyz)[::-1])]
    proj = (axes[2][None, None, :] * d[0] + axes[1][None, :, None] * d[1] + axes[0][:, None, None] * d[2])
    inside = proj[organ_zyx]
    lo, hi = float(inside.min()), float(inside.max())
    if hi <= lo:
        raise ValueError("the organ has no extent along the bias direction")
    return (proj - (lo + hi) / 2) / (hi - lo)


def bias_field(organ_zyx: np.ndarray, spacing_xyz: Sequence[float], amplitude: float,
               direction_xyz: Sequence[float]) -> np.ndarray:
    """Multiplicative field ``1 + amplitude * t`` (``t``: :func:`organ_coordinate`), floored at 0.05."""
    return np.maximum(1.0 + float(amplitude) * organ_coordinate(organ_zyx, spacing_xyz, direction_xyz),
                      BIAS_FIELD_FLOOR)


def apply_shift(image_zyx: np.ndarray, organ_zyx: np.ndarray, spacing_xyz: Sequence[float], shift: SiteShift,
                rng: np.random.Generator) -> np.ndarray:
    """Intensity scale, bias field and extra Rician noise of ``shift`` on one image (float32 out).
    A neutral shift returns the input values unchanged."""
    if shift.intensity_scale == 1.0 and shift.bias_amplitude == 0.0 and shift.noise == 0.0:
        return image_zyx.astype(np.float32, copy=True)
    out = image_zyx.astype(np.float64) * shift.intensity_scale
    if shift.bias_amplitude > 0:
        out *= bias_field(organ_zyx, spacing_xyz, shift.bias_amplitude, shift.bias_direction)
    if shift.noise > 0:
        sigma = shift.noise * PHANTOM_LIVER_INTENSITY * shift.intensity_scale
        out = np.sqrt((out + rng.normal(0.0, sigma, out.shape)) ** 2 + rng.normal(0.0, sigma, out.shape) ** 2)
    return out.astype(np.float32)


def shifted_grid(shape_xyz: Sequence[int], spacing_xyz: Sequence[float],
                 shift: SiteShift) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Grid of the same field of view at ``spacing * spacing_factors``."""
    f = shift.spacing_factors
    shape = tuple(max(MIN_GRID, int(round(n / fi))) for n, fi in zip(shape_xyz, f))
    spacing = tuple(round(float(s) * fi, 6) for s, fi in zip(spacing_xyz, f))
    return shape, spacing


def external_case(seed: int, index: int, positive: bool, shift: SiteShift | None = None,
                  shape_xyz: Sequence[int] = (64, 64, 32), spacing: Sequence[float] = (1.5, 1.5, 3.0),
                  shape_jitter: int = 3, with_vessel: bool = False, cue_strength: float = 0.2,
                  halo_width: tuple[float, float] = (0.8, 1.2), cue_kind: str = "halo",
                  cue_width: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], tuple, tuple]:
    """One external case, from its seed alone: (image (z, y, x) float32, masks, shape_xyz, spacing_xyz).
    The noise of the shift has a stream of its own, so the anatomy does not depend on it."""
    shift = shift or SiteShift()
    rng = np.random.default_rng(case_seed(seed, index))
    shp = np.array(shape_xyz) + (rng.integers(-shape_jitter, shape_jitter + 1, 3) if shape_jitter else 0)
    grid, grid_spacing = shifted_grid(tuple(int(s) for s in shp), spacing, shift)
    img, masks = make_case(rng, grid, grid_spacing, bool(positive), with_vessel, cue_strength, tuple(halo_width),
                           cue_kind, cue_width)
    organ = masks["liver"] | masks["tumor"] | masks["vessel"]
    img = apply_shift(img, organ, grid_spacing, shift, np.random.default_rng(case_seed(seed, index) + [1]))
    return img, masks, grid, grid_spacing


def _site_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()) or "site"


def make_external_site(raw_root: str | Path, name: str, n_cases: int = DEFAULT_N_CASES, shift: SiteShift | None = None,
                       prevalence: float = DEFAULT_PREVALENCE, seed: int = 0, scanner: str | None = None,
                       shape_xyz: Sequence[int] = (64, 64, 32), spacing: Sequence[float] = (1.5, 1.5, 3.0),
                       with_vessel: bool = False, labels: dict[str, int] | None = None, shape_jitter: int = 3,
                       cue_strength: float = 0.2, halo_width: tuple[float, float] = (0.8, 1.2),
                       cue_kind: str = "halo", cue_width: float | None = None, target: str = "PNI",
                       dicom: bool = False) -> Path:
    """Write the external cohort ``raw_root/name`` and return its path (see the module docstring).

    Refuses an existing folder (never overwrites); the cohort is written beside it under a temporary
    name and renamed into place when complete. ``scanner``: the ``scanner`` column (default
    ``<name>-MR1``). ``dicom``: also write each image as a DICOM series in ``dicomTs/<case_id>/``."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"external site name {name!r} must be a plain folder name (letters, digits, '_', '-', "
                         "'.'; starting with a letter or digit).")
    scanner = f"{name}-MR1" if scanner is None else str(scanner)
    if not scanner or "\n" in scanner or "," in scanner:
        raise ValueError(f"scanner name {scanner!r} must be non-empty, without commas or line breaks.")
    n_cases = int(n_cases)
    if n_cases < 2:
        raise ValueError(f"an external cohort needs at least 2 cases (both classes), got {n_cases}.")
    n_pos = n_positive(n_cases, prevalence)
    shift = shift or SiteShift()
    check_cue(cue_kind, cue_width)
    labels = dict(labels or DEFAULT_LABELS)
    if with_vessel and "vessel" not in labels:
        labels["vessel"] = max(labels.values()) + 1
    raw_root = Path(raw_root)
    folder = raw_root / name
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; refusing to overwrite it. Pick another site name "
                              "(--external-site) or output folder (-o), or delete it.")
    raw_root.mkdir(parents=True, exist_ok=True)
    y = np.array([1] * n_pos + [0] * (n_cases - n_pos))
    np.random.default_rng([int(seed), EXTERNAL_SEED_TAG]).shuffle(y)
    slug = _site_slug(name)
    ids = [check_case_id(f"{slug}_{i:03d}") for i in range(n_cases)]
    source = {"shape_xyz": [int(s) for s in shape_xyz], "spacing": [float(s) for s in spacing],
              "shape_jitter": int(shape_jitter), "with_vessel": bool(with_vessel), "cue_kind": cue_kind,
              "cue_width": cue_width, "cue_strength": float(cue_strength), "halo_width": list(halo_width)}
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=raw_root))
    work = staging / name  # the final folder name, so that name-seeded DICOM UIDs are those of the result
    try:
        cases = {}
        for i, (cid, yi) in enumerate(zip(ids, y)):
            img, masks, grid, grid_spacing = external_case(
                seed, i, bool(yi), shift, shape_xyz, spacing, shape_jitter, with_vessel, cue_strength,
                tuple(halo_width), cue_kind, cue_width)
            seg = label_map(masks, labels, with_vessel)
            _write_nifti(img, grid_spacing, work / "imagesTs" / f"{cid}_0000.nii.gz")
            _write_nifti(seg, grid_spacing, work / "labelsTs" / f"{cid}.nii.gz")
            cases[cid] = {target: int(yi), "seed": case_seed(seed, i), "shape_xyz": list(grid),
                          "spacing": list(grid_spacing)}
        with open(work / CASE_LABELS_FILE, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", target, "site", "scanner"])
            for cid, yi in zip(ids, y):
                w.writerow([cid, int(yi), name, scanner])
        save_json({
            "channel_names": {"0": "T1_HBP"}, "labels": labels, "numTraining": 0, "numTest": n_cases,
            "file_ending": ".nii.gz", "name": name,
            "description": f"NeoNet synthetic external-site cohort {name!r} (not patient data): phantom cases from "
                           "seeds disjoint from the training phantom's, with a controlled acquisition shift "
                           f"({EXTERNAL_SITE_FILE}).",
            "neonet": {"target": target, "organ_labels": ["liver"], "tumor_labels": ["tumor"]},
        }, work / "dataset.json")
        save_json({
            "site": name, "scanner": scanner, "toolkit_version": __version__, "target": target,
            "seed": int(seed),
            "seed_scheme": f"case i: numpy.random.default_rng([seed, {EXTERNAL_SEED_TAG}, i]) draws the shape jitter "
                           f"and the anatomy (demo.phantom.make_case); [seed, {EXTERNAL_SEED_TAG}, i, 1] the shift's "
                           f"noise; [seed, {EXTERNAL_SEED_TAG}] shuffles the labels. A training phantom of seed s "
                           "uses default_rng(s) and default_rng([s, 1]) only, so no case shares its seed.",
            "label_seed": [int(seed), EXTERNAL_SEED_TAG],
            "n_cases": n_cases, "n_positive": int(n_pos), "prevalence_requested": float(prevalence),
            "prevalence": n_pos / n_cases,
            "shift": shift.as_dict(),
            "shift_order": ["spacing", "intensity_scale", "bias_field", "noise"],
            "bias_field": "1 + bias_amplitude * t, t in [-1/2, 1/2] across the organ along bias_direction_xyz (mm), "
                          f"floored at {BIAS_FIELD_FLOOR}",
            "noise_sigma": shift.noise * PHANTOM_LIVER_INTENSITY * shift.intensity_scale,
            "source_phantom": source,
            "spacing": [round(float(s) * f, 6) for s, f in zip(spacing, shift.spacing_factors)],
            "cases": cases,
        }, work / EXTERNAL_SITE_FILE)
        if dicom:
            dataset_test_cases_to_dicom(work, ids)
        if folder.exists():
            raise FileExistsError(f"{folder} appeared while the cohort was written; refusing to overwrite it.")
        work.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote external site %s: %d cases (%d positive, prevalence %.2f), shift %s, seed %d", folder,
                n_cases, n_pos, n_pos / n_cases, shift.as_dict(), seed)
    return folder
