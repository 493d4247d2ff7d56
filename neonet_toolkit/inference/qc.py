"""Quality-control flags: reasons not to trust (or not to give) a probability.

Every flag is explained in README ("QC flags"); the explanations below are written into
``predictions.json`` too, so a reader of one prediction file knows what each flag means.
"""
from __future__ import annotations

import numpy as np

from neonet_toolkit.dataset.verification import is_flat

QC_FLAGS = {
    "no_tumor": "NeoSeg found no tumour in the (fold-ensembled) segmentation (tumour components smaller than 20 % "
                "of the smallest training tumour count as spurious and are relabelled as organ): no TLCR crop and no "
                "probability are produced. Check the image and the segmentation; segment manually if needed.",
    "tumor_exceeds_crop": "The tumour's bounding box is larger than the TLCR crop, so the classifier saw only "
                          "part of it. Consider a larger crop_size in neonet_plans.json (retraining needed).",
    "tumor_at_crop_border": "Tumour voxels touch the border of the TLCR crop (tumour or crop at the image edge): "
                            "peritumoral tissue on that side is missing from the classifier's input.",
    "small_tumor": "Fewer tumour voxels than the smallest training tumour: outside what the models were trained on.",
    "spacing_out_of_range": "The image spacing is outside the range seen in training (nnU-Net fingerprint, "
                            "x0.8..x1.25 tolerance); resampling may change what the models see.",
    "constant_image": "The image is constant, all zero or nearly so (its relative intensity spread, std / (|mean| + "
                      "std), is below 5 % of the training foreground's, from the nnU-Net fingerprint): not an MRI. "
                      "No probability and no decision are given; the mask is meaningless. Check the export.",
    "image_not_trained_kind": "The intensities inside the segmented liver+tumour have (nearly) no spread (relative "
                              "spread below 5 % of the training foreground's, or constant): not an MRI of the kind "
                              "the models were trained on (blank, saturated or synthetic region). No probability and "
                              "no decision are given. Check the image.",
    "intensity_out_of_range": "The median intensity inside the segmented liver+tumour is outside the training "
                              "fingerprint's 0.5-99.5 percentile range of foreground intensities (other scanner, "
                              "sequence or scaling).",
    "fold_disagreement_seg": "The per-fold segmentations disagree about the tumour (mean pairwise tumour Dice "
                             "< 0.5): the location of the crop is uncertain.",
    "fold_disagreement_cls": "The per-fold probabilities spread widely (max - min > 0.5): the classifiers "
                             "disagree about this case.",
    "gt_trained_classifier_on_predicted_mask": "The NeoCls run was trained on crops from ground-truth masks "
                                               "(crop source gt) but is applied to a crop from NeoSeg's predicted "
                                               "mask: its validation AUC does not describe this end-to-end use. "
                                               "Train with --crop-source pred for an end-to-end model.",
}


#: flags that withhold the probability and the decision (the record keeps its mask and its other flags)
WITHHOLDING_FLAGS = frozenset({"no_tumor", "constant_image", "image_not_trained_kind"})

#: A case's relative spread (std / (|mean| + std), scale-free) below this fraction of the training foreground's
#: is "nearly constant". A single case's organ has less spread than the pooled training foreground (which adds
#: between-case and organ/tumour contrast), but of the same order: 0.5-0.9 per case on the phantom (not yet measured
#: on real MRI). A constant image with noise of 0.2 % of its level has a ratio below 0.01 (for a training
#: relative spread of 0.25, the phantom's). 0.05 leaves a margin of 5x or more on both sides.
NOT_TRAINED_SPREAD_FRACTION = 0.05


def relative_spread(values: np.ndarray) -> float:
    """std / (|mean| + std): 0 for a constant, up to 1 for zero-mean values; unchanged by intensity scaling."""
    v = np.asarray(values, dtype=np.float64)
    return _relative(float(v.mean()), float(v.std()))


def _relative(mean: float, std: float) -> float:
    denom = abs(mean) + std
    return std / denom if denom > 0 else 0.0


def image_kind_flags(image: np.ndarray, roi: np.ndarray, fingerprint_channel: dict | None) -> list[str]:
    """``["constant_image"]``, ``["image_not_trained_kind"]`` or ``[]``: is this image an MRI of the kind trained on?

    ``image``: the raw image channel the classifier uses; ``roi``: the predicted organ+tumour mask on the same
    grid; ``fingerprint_channel``: that channel's entry of the training fingerprint's
    ``foreground_intensity_properties_per_channel`` (``mean``, ``std``; ``None`` or without them, only exact
    constancy is judged).

    * ``constant_image``: the whole image is constant up to float32 rounding (all zero included), or its relative
      spread is below :data:`NOT_TRAINED_SPREAD_FRACTION` x the training foreground's.
    * ``image_not_trained_kind``: the same two tests on the voxels inside ``roi`` (not judged when it is empty).

    Both are in :data:`WITHHOLDING_FLAGS`. Non-finite voxels are left out (inputs with them are refused earlier).
    """
    img = np.asarray(image)
    finite = np.isfinite(img)
    values = img[finite]
    if values.size == 0:
        return ["constant_image"]
    fp = fingerprint_channel or {}
    limit = None
    if fp.get("std") is not None and fp.get("mean") is not None:
        limit = NOT_TRAINED_SPREAD_FRACTION * _relative(float(fp["mean"]), float(fp["std"]))

    def flat(v: np.ndarray) -> bool:
        return is_flat(v) or (limit is not None and relative_spread(v) < limit)

    if flat(values):
        return ["constant_image"]
    region = np.asarray(roi, bool) & finite
    if region.any() and flat(img[region]):
        return ["image_not_trained_kind"]
    return []


def spacing_flag(spacing, training_spacings, tolerance=(0.8, 1.25)) -> bool:
    """True when any axis of ``spacing`` lies outside [min*0.8, max*1.25] of the training spacings."""
    sp = np.asarray(training_spacings, dtype=float)
    lo, hi = sp.min(0) * tolerance[0], sp.max(0) * tolerance[1]
    s = np.asarray(spacing, dtype=float)
    return bool(np.any(s < lo) or np.any(s > hi))


def intensity_flag(image: np.ndarray, roi: np.ndarray, fingerprint_channel: dict) -> bool:
    if not roi.any():
        return False
    med = float(np.median(image[roi]))
    lo = fingerprint_channel.get("percentile_00_5", fingerprint_channel.get("min"))
    hi = fingerprint_channel.get("percentile_99_5", fingerprint_channel.get("max"))
    return bool(med < lo or med > hi)


def crop_border_flag(tumor_patch: np.ndarray) -> bool:
    """True when tumour voxels lie on any face of the crop."""
    t = np.asarray(tumor_patch, bool)
    for ax in range(t.ndim):
        if np.take(t, 0, axis=ax).any() or np.take(t, -1, axis=ax).any():
            return True
    return False


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def fold_seg_disagreement(tumor_masks: list[np.ndarray], threshold: float = 0.5) -> tuple[bool, float]:
    """(flag, mean pairwise tumour Dice) across per-fold tumour masks."""
    if len(tumor_masks) < 2:
        return False, 1.0
    ds = [dice(tumor_masks[i], tumor_masks[j]) for i in range(len(tumor_masks))
          for j in range(i + 1, len(tumor_masks))]
    m = float(np.mean(ds))
    return m < threshold, m


def fold_cls_disagreement(probs: list[float], spread: float = 0.5) -> bool:
    return len(probs) > 1 and (max(probs) - min(probs)) > spread


class CaseQC:
    """The QC of one prediction, in the order ``neonet_predict`` applies it: :meth:`image_flags` on the image and
    the final mask (before any crop), :meth:`crop_flags` on the TLCR crop of a case given a probability,
    :meth:`classifier_flags` on the fold probabilities. ``fingerprint``: nnU-Net's dataset fingerprint;
    ``postprocessing``: the plans' rules (tolerances, thresholds); ``min_train_tumor``: voxels of the smallest
    training tumour on the crop grid (0 = unknown)."""

    def __init__(self, fingerprint: dict, postprocessing: dict, image_channel: int = 0, min_train_tumor: int = 0):
        self.fingerprint, self.post = fingerprint, postprocessing
        self.image_channel, self.min_train_tumor = int(image_channel), int(min_train_tumor)

    def image_flags(self, data: np.ndarray, roi: np.ndarray, spacing, fold_tumors: list[np.ndarray]
                    ) -> tuple[list[str], float]:
        """(flags, mean pairwise fold tumour Dice): spacing, intensity, image kind, fold disagreement."""
        flags = []
        image = data[self.image_channel]
        if spacing_flag(spacing, self.fingerprint["spacings"], tuple(self.post["qc_spacing_tolerance"])):
            flags.append("spacing_out_of_range")
        fp_ch = self.fingerprint["foreground_intensity_properties_per_channel"].get(str(self.image_channel))
        if fp_ch and intensity_flag(image, roi, fp_ch):
            flags.append("intensity_out_of_range")
        # not an MRI of the kind trained on (constant, near-constant, flat organ): no decision is given
        flags += image_kind_flags(image, roi, fp_ch)
        dis, fold_dice = fold_seg_disagreement(fold_tumors, float(self.post["qc_fold_dice_min"]))
        if dis:
            flags.append("fold_disagreement_seg")
        return flags, fold_dice

    def crop_flags(self, info, tumor_patch: np.ndarray) -> list[str]:
        """Tumour larger than the crop, at its border, or smaller than any training tumour."""
        flags = []
        if info.tumor_clipped:
            flags.append("tumor_exceeds_crop")
        if crop_border_flag(tumor_patch):
            flags.append("tumor_at_crop_border")
        if self.min_train_tumor and info.tumor_voxels < self.min_train_tumor:
            flags.append("small_tumor")
        return flags

    def classifier_flags(self, probs: list[float], crop_sources: list[str]) -> list[str]:
        """Fold probabilities spread widely; a classifier trained on ground-truth crops applied to a predicted mask."""
        flags = []
        if fold_cls_disagreement(probs, float(self.post["qc_fold_probability_spread_max"])):
            flags.append("fold_disagreement_cls")
        if any(s == "gt" for s in crop_sources):
            flags.append("gt_trained_classifier_on_predicted_mask")
        return flags
