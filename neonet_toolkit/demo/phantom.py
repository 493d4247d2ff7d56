"""Synthetic phantom dataset in the NeoNet contract (no patient data needed).

Each case is a small 3D "hepatobiliary-phase" volume: a body, a bright liver (hepatocytes take
up the contrast agent), a hypointense tumour near the liver surface, optionally a vessel label,
Rician-like noise and a smooth bias field. Spacing is anisotropic (thicker slices) and the
volume size varies per case (odd sizes included).

The PNI-like cue is subtle by design: PNI-positive tumours have an *irregular peritumoral
hypointense halo* (perineural spread into the liver around the tumour, ~20 % darker than
liver, partial coverage) and one or two thin strands leaving the tumour. It lives in the
organ channel of the TLCR crop, it is not in the masks (the halo is labelled liver), and
tumour size and position have the same distribution in both classes, so a classifier must
look at texture around the tumour, not at the mask.

The halo is a shell from 1 to 1 + ``halo_width`` tumour radii (default U(0.8, 1.2), i.e. 3–7
voxels in-plane at the demo's 1.5 mm spacing), so it survives the frozen VAE encoder's ×4
downsampling of the demo's 32×32×16 crop. A thinner shell (0.35–0.55 radii, 1–3 voxels) is
averaged away on the latent grid: measured on 60-case phantoms, PattenNet then stays at chance
(pooled out-of-fold AUC 0.40) while a tiny CNN on the raw patch reaches 0.70; with the default
shell PattenNet on per-fold trained VAEs reaches 0.79 (real only) and 0.89 (with NeoGen's
synthetic positives) over 5 folds (docs/neocls.md, "Phantom note").
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from neonet_toolkit.demo.dicom_series import dataset_test_cases_to_dicom
from neonet_toolkit.preprocessing.tlcr import tlcr
from neonet_toolkit.utilities.io import save_json

logger = logging.getLogger(__name__)

DEFAULT_LABELS = {"background": 0, "liver": 1, "tumor": 2}
CUE_KINDS = ("halo", "tube")
PHANTOM_FILE = "phantom.json"


def check_cue(cue_kind: str, cue_width: float | None, label_noise: float = 0.0) -> None:
    if cue_kind not in CUE_KINDS:
        raise ValueError(f"Unknown cue kind {cue_kind!r}; choose one of {CUE_KINDS} (--cue-kind).")
    if cue_width is not None and not 0.5 <= float(cue_width) <= 20:
        raise ValueError(f"--cue-width must be between 0.5 and 20 voxels, got {cue_width}.")
    if not 0.0 <= float(label_noise) < 0.5:
        raise ValueError(f"--label-noise must be in [0, 0.5) (probability of flipping a recorded label), "
                         f"got {label_noise}.")


def _coords(shape_xyz, spacing):
    # index grids in (z, y, x) array order, in millimetres
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape_xyz[::-1], spacing[::-1])), indexing="ij")
    return x, y, z


def _smooth_noise(rng, shape_zyx, scale_vox: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = rng.standard_normal(shape_zyx)
    n = gaussian_filter(n, sigma=scale_vox)
    return n / (n.std() + 1e-8)


def make_case(rng: np.random.Generator, shape_xyz, spacing, positive: bool, with_vessel: bool,
              cue_strength: float = 0.2, halo_width: tuple[float, float] = (0.8, 1.2), cue_kind: str = "halo",
              cue_width: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Return image (z, y, x) float32 and boolean masks {'liver', 'tumor', 'vessel'}.

    ``cue_kind`` ``"halo"`` (default): peritumoral shell + 1-2 strands; ``"tube"``: 1-2 thin tubes
    touching the tumour, no shell. ``cue_width`` (in-plane voxels) fixes the shell thickness and the
    strand/tube diameter; ``None`` keeps the default law (shell of ``halo_width`` tumour radii, strands
    of radius 1.2 voxels), so the default output is unchanged."""
    check_cue(cue_kind, cue_width)
    x, y, z = _coords(shape_xyz, spacing)
    ext = np.array(shape_xyz) * np.array(spacing)
    c = ext / 2
    zyx = tuple(shape_xyz[::-1])
    # body: elliptic cylinder
    body = ((x - c[0]) / (0.47 * ext[0])) ** 2 + ((y - c[1]) / (0.42 * ext[1])) ** 2 <= 1
    # liver: deformed ellipsoid, right side of the body
    lc = c + np.array([-0.1 * ext[0], 0.0, 0.0]) + rng.uniform(-2, 2, 3)
    lr = np.array([0.30 * ext[0], 0.28 * ext[1], 0.36 * ext[2]]) * rng.uniform(0.9, 1.1, 3)
    deform = 0.08 * _smooth_noise(rng, zyx, 4.0)
    r_liver = np.sqrt(((x - lc[0]) / lr[0]) ** 2 + ((y - lc[1]) / lr[1]) ** 2 + ((z - lc[2]) / lr[2]) ** 2)
    liver = (r_liver + deform <= 1) & body
    # tumour: ellipsoid near the liver surface, same size law for both classes
    direction = rng.normal(size=3)
    direction[2] *= 0.3
    direction /= np.linalg.norm(direction)
    tc = lc + direction * lr * rng.uniform(0.35, 0.55)
    tr = rng.uniform(5.0, 9.0) * np.array([1.0, rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)])
    r_t = np.sqrt(((x - tc[0]) / tr[0]) ** 2 + ((y - tc[1]) / tr[1]) ** 2 + ((z - tc[2]) / tr[2]) ** 2)
    tumor = (r_t + 0.06 * _smooth_noise(rng, zyx, 2.0) <= 1) & liver
    vessel = np.zeros_like(liver)
    if with_vessel:
        vy = lc[1] + rng.uniform(-0.3, 0.3) * lr[1]
        vz = lc[2] + rng.uniform(-0.2, 0.2) * lr[2]
        vessel = (((y - vy) ** 2 + ((z - vz) * 0.7) ** 2) <= rng.uniform(2.0, 3.0) ** 2) & liver & ~tumor

    img = np.full(zyx, 0.05, np.float32)
    img[body] = 0.35
    img[liver] = 1.0
    img[vessel] = 0.55
    # tumour: hypointense with mild internal texture
    img[tumor] = 0.45 + 0.05 * _smooth_noise(rng, zyx, 1.5)[tumor]
    if positive:
        vox = float(min(spacing))
        if cue_kind == "halo":
            # irregular peritumoral halo: shell 1..1+w of the tumour radius, partial coverage
            shell_w = rng.uniform(*halo_width)
            if cue_width is not None:  # a shell of ~cue_width in-plane voxels
                shell_w = float(cue_width) * vox / float(np.mean(tr[:2]))
            cover = _smooth_noise(rng, zyx, 2.0) > -0.5  # ~70 % of the shell
            halo = (r_t > 1.0) & (r_t <= 1.0 + shell_w) & liver & ~tumor & ~vessel & cover
            img[halo] -= cue_strength
        # one or two thin strands (tubes) leaving the tumour (perineural spread)
        radius = 1.2 * vox if cue_width is None else max(0.5, float(cue_width) / 2) * vox
        for _ in range(rng.integers(1, 3)):
            d = rng.normal(size=3)
            d[2] *= 0.3
            d /= np.linalg.norm(d)
            p = np.stack([x - tc[0], y - tc[1], z - tc[2]], -1)
            along = p @ d
            perp = np.linalg.norm(p - along[..., None] * d, axis=-1)
            strand = (perp <= radius) & (along > 0) & (along <= tr.max() * 2.2) & liver & ~tumor
            img[strand] -= cue_strength
    bias = 1.0 + 0.05 * _smooth_noise(rng, zyx, 10.0)
    img = img * bias
    noise = 0.05
    img = np.sqrt((img + rng.normal(0, noise, zyx)) ** 2 + rng.normal(0, noise, zyx) ** 2)
    img = (img * 800).astype(np.float32)  # MR-like arbitrary units
    return img, {"liver": liver & ~tumor & ~vessel, "tumor": tumor, "vessel": vessel}


def _write_nifti(arr_zyx: np.ndarray, spacing, path: Path, origin=None) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(origin) if origin is not None else (0.0, 0.0, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def label_map(masks: dict[str, np.ndarray], labels: dict[str, int], with_vessel: bool) -> np.ndarray:
    """The label volume of a case's masks: liver, then vessel (when present), then tumour on top."""
    seg = np.zeros(masks["liver"].shape, np.uint8)
    seg[masks["liver"]] = labels["liver"]
    if with_vessel:
        seg[masks["vessel"]] = labels["vessel"]
    seg[masks["tumor"]] = labels["tumor"]
    return seg


def make_phantom_dataset(raw_root: str | Path, dataset_id: int = 501, name: str = "NeoNetPhantom",
                         n_train: int = 30, n_test: int = 4, shape_xyz: Sequence[int] = (64, 64, 32),
                         spacing: Sequence[float] = (1.5, 1.5, 3.0), labels: dict[str, int] | None = None,
                         with_vessel: bool | None = None, positive_fraction: float = 1 / 3,
                         shape_jitter: int = 3, seed: int = 0, target: str = "PNI",
                         neonet_options: dict | None = None, cue_strength: float = 0.2,
                         halo_width: tuple[float, float] = (0.8, 1.2), cue_kind: str = "halo",
                         cue_width: float | None = None, label_noise: float = 0.0,
                         overwrite: bool = False, dicom: bool = False) -> Path:
    """Write ``raw_root/DatasetXXX_name`` and return its path. Refuses to overwrite an existing dataset.

    Hard benchmarks: ``cue_kind`` / ``cue_width`` (see :func:`make_case`) and ``label_noise`` (each
    recorded training/test label flipped with this probability, drawn from a generator of its own so
    the images are those of the noise-free dataset). The settings, the true labels and the flipped
    cases are written to ``phantom.json`` beside ``dataset.json``. ``dicom``: also write each test image as a
    DICOM MR series in ``dicomTs/<case_id>/`` (``neonet_predict -i .../dicomTs`` reads them)."""
    check_cue(cue_kind, cue_width, label_noise)
    labels = dict(labels or DEFAULT_LABELS)
    if with_vessel is None:
        with_vessel = "vessel" in labels
    if with_vessel and "vessel" not in labels:
        labels["vessel"] = max(labels.values()) + 1
    for req in ("background", "liver", "tumor"):
        if req not in labels:
            raise ValueError(f"labels must define {req!r}, got {labels}")
    raw_root = Path(raw_root)
    existing = sorted(raw_root.glob(f"Dataset{dataset_id:03d}_*")) if raw_root.is_dir() else []
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; refusing to overwrite a dataset. Pick another id (-d) or delete it."
        )
    if overwrite:
        import shutil

        for e in existing:
            shutil.rmtree(e)
    rng = np.random.default_rng(seed)
    n_pos = int(round(n_train * positive_fraction))
    train_labels = np.array([1] * n_pos + [0] * (n_train - n_pos))
    rng.shuffle(train_labels)
    n_test_pos = int(round(n_test * positive_fraction)) if n_test else 0
    test_labels = np.array([1] * n_test_pos + [0] * (n_test - n_test_pos))
    rng.shuffle(test_labels)

    def one(split: str, idx: int, y: int):
        cid = f"{name.lower()}_{idx:03d}"
        shp = np.array(shape_xyz) + (rng.integers(-shape_jitter, shape_jitter + 1, 3) if shape_jitter else 0)
        img, masks = make_case(rng, tuple(int(s) for s in shp), spacing, bool(y), with_vessel, cue_strength,
                               tuple(halo_width), cue_kind, cue_width)
        seg = label_map(masks, labels, with_vessel)
        _write_nifti(img, spacing, folder / f"images{split}" / f"{cid}_0000.nii.gz")
        _write_nifti(seg, spacing, folder / f"labels{split}" / f"{cid}.nii.gz")
        return cid

    from tqdm import tqdm

    train_ids = [one("Tr", i, int(y)) for i, y in enumerate(tqdm(train_labels, desc="phantom train", disable=None))]
    test_ids = [one("Ts", n_train + i, int(y)) for i, y in enumerate(test_labels)]

    def write_csv(path, ids, ys):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", target])
            for c, y in zip(ids, ys):
                w.writerow([c, int(y)])

    true_labels = {c: int(y) for c, y in zip(train_ids + test_ids, list(train_labels) + list(test_labels))}
    flipped: list[str] = []
    if label_noise > 0:
        noise_rng = np.random.default_rng([int(seed), 1])  # own stream: the images do not depend on the noise
        flip = noise_rng.random(len(true_labels)) < float(label_noise)
        flipped = [c for c, f in zip(true_labels, flip) if f]
        train_labels = np.array([1 - y if c in flipped else y for c, y in zip(train_ids, train_labels)])
        test_labels = np.array([1 - y if c in flipped else y for c, y in zip(test_ids, test_labels)])
        logger.info("label noise %.2f: %d of %d recorded labels flipped", label_noise, len(flipped), len(true_labels))
    write_csv(folder / "case_labels.csv", train_ids, train_labels)
    if n_test:
        write_csv(folder / "case_labels_Ts.csv", test_ids, test_labels)
    save_json({"seed": int(seed), "cue_kind": cue_kind, "cue_width_voxels": cue_width,
               "halo_width_radii": list(halo_width) if cue_width is None and cue_kind == "halo" else None,
               "cue_strength": float(cue_strength), "label_noise": float(label_noise),
               "true_labels": true_labels, "flipped": flipped}, folder / PHANTOM_FILE)
    dataset_json = {
        "channel_names": {"0": "T1_HBP"},
        "labels": labels,
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "NeoNet synthetic phantom (not patient data). PNI-positive cases carry a subtle "
                       "peritumoral hypointense halo and strands.",
        "neonet": {"target": target, "organ_labels": ["liver"], "tumor_labels": ["tumor"], **(neonet_options or {})},
    }
    save_json(dataset_json, folder / "dataset.json")
    if dicom:
        dataset_test_cases_to_dicom(folder, test_ids)
    logger.info("Wrote %s: %d train (%d positive), %d test; cue %s, width %s", folder, n_train,
                int(np.sum(train_labels)), n_test, cue_kind, "default" if cue_width is None else f"{cue_width} voxels")
    return folder


def make_phantom_patches(n: int, seed: int = 0, positive_fraction: float = 1 / 3,
                         crop_size_zyx: Sequence[int] = (16, 32, 32), shape_xyz: Sequence[int] = (64, 64, 32),
                         spacing: Sequence[float] = (1.5, 1.5, 3.0), **case_kw) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    """``n`` phantom TLCR patches in memory, as the pipeline stores them: images (n, 2, *crop) z-scored per
    volume (nnU-Net's ZScore), labels (n, 2, *crop) and PNI classes (n,); the first ``round(n * positive_fraction)``
    are positive. For metric checks that need real-looking patches without planning a dataset."""
    rng = np.random.default_rng(seed)
    n_pos = int(round(n * positive_fraction))
    images, labels, classes = [], [], []
    for i in range(n):
        img, masks = make_case(rng, shape_xyz, spacing, positive=i < n_pos, with_vessel=False, **case_kw)
        img = (img - img.mean()) / (img.std() + 1e-8)
        im, lab, info = tlcr(img, masks["liver"], masks["tumor"], crop_size_zyx)
        if info.empty_tumor:
            raise RuntimeError(f"phantom patch {i} (seed {seed}) has no tumour")
        images.append(im)
        labels.append(lab)
        classes.append(int(i < n_pos))
    return np.stack(images), np.stack(labels), np.array(classes)
