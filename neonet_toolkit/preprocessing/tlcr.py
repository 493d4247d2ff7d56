"""Tumor-Localized ROI Crop (TLCR), Algorithm 1 of the NeoNet paper, made total.

Differences from the paper's pseudo-code, all deliberate:

* the crop start is clamped at **both** borders (``0 <= start <= shape - C``), so the crop is
  always exactly ``C`` voxels and never silently shorter near the far border;
* an axis shorter than ``C`` is taken whole and zero-padded symmetrically
  (``start = -((C - shape) // 2)``; a negative start means padding);
* an empty tumour returns all-zero patches **and** ``empty_tumor=True`` so callers can report
  it instead of feeding a blank patch to a classifier as if it were a case;
* label roles are boolean masks, so any label ids work (see :class:`LabelRoles`).

Everything is vectorised: one ``argwhere``-free bounding-box computation and one slice copy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass
class TLCRInfo:
    crop_size: tuple[int, ...]
    start: tuple[int, ...] | None        # crop origin in the input grid (negative = zero padding)
    center: tuple[int, ...] | None       # floor((bbox_min + bbox_max) / 2), bbox_max exclusive
    bbox_min: tuple[int, ...] | None
    bbox_max: tuple[int, ...] | None     # exclusive
    tumor_voxels: int
    tumor_voxels_in_crop: int
    tumor_clipped: bool                  # tumour bbox larger than the crop or cut by it
    padded: bool                         # the volume was smaller than the crop on some axis
    empty_tumor: bool
    # spatial axes reversed before the crop to reach the canonical orientation (set by
    # preprocessing.orientation.canonical_tlcr; None = not canonicalised, e.g. unknown geometry)
    canonical_flips: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(min, max_exclusive) of the True voxels of an n-D mask, or None when empty.

    One projection over the whole volume finds the extent along axis 0; the remaining axes are
    projected inside that slab only (tumours are small, so this is close to one pass).
    """
    proj0 = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if proj0.size == 0:
        return None
    lo, hi = [proj0[0]], [proj0[-1] + 1]
    slab = mask[lo[0]:hi[0]]
    for ax in range(1, mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(np.any(slab, axis=other))
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.asarray(lo), np.asarray(hi)


def crop_start(center: Sequence[int], shape: Sequence[int], crop_size: Sequence[int]) -> np.ndarray:
    """Crop origin for a crop of ``crop_size`` centred at ``center``, clamped at both borders."""
    center, shape, crop = (np.asarray(x, dtype=np.int64) for x in (center, shape, crop_size))
    start = center - crop // 2
    start = np.minimum(np.maximum(start, 0), np.maximum(shape - crop, 0))
    small = shape < crop
    start[small] = -((crop[small] - shape[small]) // 2)
    return start


def extract(volume: np.ndarray, start: Sequence[int], crop_size: Sequence[int], fill=0) -> np.ndarray:
    """``volume[start:start+crop_size]`` over the last ``len(crop_size)`` axes, zero-padded outside."""
    nd = len(crop_size)
    spatial = volume.shape[-nd:]
    out = np.full(volume.shape[:-nd] + tuple(int(c) for c in crop_size), fill, dtype=volume.dtype)
    src, dst = [], []
    for s, c, n in zip(start, crop_size, spatial):
        a, b = max(int(s), 0), min(int(s) + int(c), n)
        src.append(slice(a, b))
        dst.append(slice(a - int(s), b - int(s)))
    lead = (slice(None),) * (volume.ndim - nd)
    out[lead + tuple(dst)] = volume[lead + tuple(src)]
    return out


def tlcr(image: np.ndarray, organ_mask: np.ndarray, tumor_mask: np.ndarray,
         crop_size: Sequence[int] = (48, 96, 96)) -> tuple[np.ndarray, np.ndarray, TLCRInfo]:
    """Tumour-centred crop with two channels.

    Args:
        image: spatial array (e.g. z, y, x) of intensities.
        organ_mask: boolean mask of the organ label(s) (e.g. liver), same shape.
        tumor_mask: boolean mask of the tumour label(s), same shape.
        crop_size: crop in the *array's* axis order (the paper's 96x96x48 in x, y, z is
            ``(48, 96, 96)`` for a z, y, x array).

    Returns:
        image_patch: float32 ``(2, *crop_size)``: image inside organ∪tumour, image inside tumour.
        label_patch: uint8 ``(2, *crop_size)``: organ∪tumour mask, tumour mask (ControlNet condition).
        info: :class:`TLCRInfo` with the crop origin, tumour bbox and flags.
    """
    image = np.asarray(image)
    organ_mask = np.asarray(organ_mask, dtype=bool)
    tumor_mask = np.asarray(tumor_mask, dtype=bool)
    crop = tuple(int(c) for c in crop_size)
    if image.shape != organ_mask.shape or image.shape != tumor_mask.shape:
        raise ValueError(
            f"TLCR: image {image.shape}, organ mask {organ_mask.shape} and tumour mask {tumor_mask.shape} "
            "must have the same shape (resample the label onto the image grid)."
        )
    if len(crop) != image.ndim or min(crop) < 1:
        raise ValueError(f"TLCR: crop_size {crop_size} must have {image.ndim} positive entries.")
    padded = bool(np.any(np.asarray(image.shape) < np.asarray(crop)))
    bb = _bbox(tumor_mask)
    if bb is None:
        info = TLCRInfo(crop, None, None, None, None, 0, 0, False, padded, True)
        return np.zeros((2,) + crop, np.float32), np.zeros((2,) + crop, np.uint8), info
    lo, hi = bb
    center = (lo + hi) // 2
    start = crop_start(center, image.shape, crop)
    img_c = extract(image, start, crop).astype(np.float32, copy=False)
    tum_c = extract(tumor_mask, start, crop, fill=False)
    roi_c = extract(organ_mask, start, crop, fill=False) | tum_c
    image_patch = np.stack([img_c * roi_c, img_c * tum_c]).astype(np.float32)
    label_patch = np.stack([roi_c, tum_c]).astype(np.uint8)
    n_t = int(np.count_nonzero(tumor_mask[lo[0]:hi[0]]))  # all tumour voxels lie in this slab
    n_in = int(tum_c.sum())
    clipped = bool(np.any(lo < start) or np.any(hi > start + np.asarray(crop)))
    info = TLCRInfo(crop, tuple(int(s) for s in start), tuple(int(c) for c in center),
                    tuple(int(v) for v in lo), tuple(int(v) for v in hi), n_t, n_in, clipped, padded, False)
    return image_patch, label_patch, info


def tlcr_from_segmentation(image: np.ndarray, seg: np.ndarray, roles, crop_size: Sequence[int]):
    """TLCR on a label map, resolving organ/tumour ids through :class:`LabelRoles`."""
    organ, tumor = roles.masks(seg)
    return tlcr(image, organ, tumor, crop_size)
