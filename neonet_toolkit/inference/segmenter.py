"""The NeoSeg side of ``neonet_predict``: the fold ensemble of one nnU-Net model folder, loaded once.

:class:`SegmentationEnsemble` checks the model folder, hands each verified fold checkpoint to nnU-Net's
predictor (one load per file, :func:`~neonet_toolkit.models.seg.initialize_predictor`), and segments a case
with nnU-Net's own preprocessing, sliding window and export, in the canonical orientation, returning the mask
in the dataset's label ids and the per-fold tumour masks the QC flag needs. It also owns the two rules that
belong to the segmentation: the resampled-size refusal and the spurious-tumour relabelling.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from neonet_toolkit.dataset.contract import load_dataset_json
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import METRE_SPACING_LIMIT_MM
from neonet_toolkit.dataset.labels import LabelRoles, remap_labels
from neonet_toolkit.experiment_planning.plans import POSTPROCESSING
from neonet_toolkit.inference.inputs import InputCase
from neonet_toolkit.models.seg import (
    check_model_folder,
    default_model_folder,
    initialize_predictor,
    label_map_by_name,
    model_folds,
    registered_model,
)
from neonet_toolkit.preprocessing.orientation import canonical_orientation
from neonet_toolkit.utilities.io import atomic_path

logger = logging.getLogger(__name__)


class FoldLogitsPredictor(nnUNetPredictor):
    """nnU-Net's predictor with one hook: each fold's logits are also handed to a callback.

    The fold loop, its compiled-module and thread handling stay nnU-Net's own
    (:meth:`predict_logits_from_preprocessed_data`); only the sliding-window call is observed."""

    _fold_hook = None

    def predict_sliding_window_return_logits(self, input_image):
        logits = super().predict_sliding_window_return_logits(input_image)
        if self._fold_hook is not None:
            self._fold_hook(logits)
        return logits

    def predict_logits_with_fold_hook(self, data: torch.Tensor, hook) -> torch.Tensor:
        self._fold_hook = hook
        try:
            return self.predict_logits_from_preprocessed_data(data)
        finally:
            self._fold_hook = None


def remove_spurious_tumor(seg: np.ndarray, spacing, roles: LabelRoles, min_train_tumor_ml: float,
                          min_component_fraction: float) -> int:
    """Relabel, in place, tumour components below ``min_component_fraction`` x the smallest training tumour
    (``min_train_tumor_ml``) as the first organ label. Returns the number of relabelled voxels."""
    from scipy.ndimage import label

    if not min_train_tumor_ml:
        return 0
    tumor = np.isin(seg, roles.tumor_ids)
    comps, n = label(tumor, structure=np.ones((3, 3, 3)))
    if n == 0:
        return 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(comps.ravel())[1:] * voxel_ml
    small = np.flatnonzero(sizes < min_component_fraction * min_train_tumor_ml) + 1
    if small.size == 0:
        return 0
    drop = np.isin(comps, small)
    seg[drop] = roles.organ_ids[0]
    return int(drop.sum())


class SegmentationEnsemble:
    """NeoSeg's fold models of ``model_folder`` (default: the dataset's registered or default model)."""

    def __init__(self, dataset_name: str, dataset_json: dict, roles: LabelRoles, postprocessing: dict,
                 model_folder: str | Path | None, folds: Sequence[int | str] | None, device: torch.device,
                 trust_checkpoints: bool = False, timings: dict | None = None):
        self.model_folder = Path(model_folder) if model_folder is not None else default_model_folder(dataset_name)
        folds = list(folds) if folds is not None else None
        check_model_folder(self.model_folder, folds, trust_checkpoints, verify=False)  # verified by its one load
        self.trust_checkpoints = bool(trust_checkpoints)
        self.folds = folds if folds is not None else model_folds(self.model_folder)
        dev = torch.device("cuda", device.index or 0) if device.type == "cuda" else device
        self.predictor = FoldLogitsPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                             perform_everything_on_device=dev.type == "cuda", device=dev,
                                             verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        initialize_predictor(self.predictor, self.model_folder, self.folds, "checkpoint_final.pth", trust_checkpoints)
        model_json = load_dataset_json(self.model_folder / "dataset.json")
        self.file_ending = model_json["file_ending"]
        self.n_channels = len(model_json["channel_names"])
        reg = registered_model(dataset_name) or {}
        self.label_map = label_map_by_name(model_json["labels"], dataset_json["labels"],
                                           reg.get("label_names") or None, where=str(self.model_folder))
        self.roles = roles
        # tumour label ids in the model's own label space (for the per-fold QC masks)
        self.model_tumor_ids = sorted(int(k) for k, v in self.label_map.items() if v in roles.tumor_ids)
        self.postprocessing = postprocessing
        self.timings = timings if timings is not None else {}

    @property
    def plans_manager(self):
        return self.predictor.plans_manager

    @property
    def configuration_manager(self):
        return self.predictor.configuration_manager

    def files(self) -> list[Path]:
        """The files a segmentation depends on: the model's plans, dataset.json and fold checkpoints."""
        return [self.model_folder / "plans.json", self.model_folder / "dataset.json",
                *(self.model_folder / f"fold_{f}" / "checkpoint_final.pth" for f in self.folds)]

    def _tick(self, key: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + t - t0
        return t

    def segment(self, case: InputCase):
        """(raw-space segmentation in dataset label ids, properties, image data, per-fold tumour masks,
        (preprocessed image, its properties))."""
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self.predictor
        t0 = time.perf_counter()
        rw = p.plans_manager.image_reader_writer_class()
        data, props = rw.read_images([str(f) for f in case.files])
        self.check_resampled_size(case.case_id, data.shape[1:], props["spacing"])
        pre = p.configuration_manager.preprocessor_class(verbose=False)
        pdata, _, pprops = pre.run_case_npy(data, None, props, p.plans_manager, p.configuration_manager,
                                            p.dataset_json)
        t0 = self._tick("read_preprocess", t0)
        # NeoSeg sees the image in the canonical orientation (axes flipped to point the positive LPS way), and
        # its logits are flipped back: nnU-Net's sliding window pads odd size differences asymmetrically and sums
        # tiles in storage order, so the same anatomy stored mirrored would otherwise get a (slightly) other mask
        dims = [1 + a for a in canonical_orientation(props, p.plans_manager.transpose_forward).flips]
        x = torch.from_numpy(np.ascontiguousarray(np.flip(pdata, dims)) if dims else pdata)
        fold_tumors = []
        tumor_ids = self.model_tumor_ids

        def per_fold(logits):  # nnU-Net's own fold loop calls this once per fold (for the QC flag)
            logits = torch.flip(logits, dims) if dims else logits
            seg_k = p.label_manager.convert_logits_to_segmentation(logits.to("cpu")).numpy()
            fold_tumors.append(np.isin(seg_k, tumor_ids))

        with torch.inference_mode():
            total = p.predict_logits_with_fold_hook(x, per_fold)
            total = torch.flip(total, dims) if dims else total
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            total, p.plans_manager, p.configuration_manager, p.label_manager, pprops)
        seg = np.asarray(seg)
        if any(k != v for k, v in self.label_map.items()):
            seg = remap_labels(seg, self.label_map)
        self._tick("segmentation", t0)
        return seg.astype(np.uint8), props, data, fold_tumors, (pdata, pprops)

    def write_mask(self, seg: np.ndarray, props: dict, target: Path) -> None:
        """The mask in the input's geometry, with the model's own writer, atomically."""
        t0 = time.perf_counter()
        rw = self.predictor.plans_manager.image_reader_writer_class()
        with atomic_path(target, suffix=self.file_ending) as tmp:
            rw.write_seg(seg, str(tmp), props)
        self._tick("export", t0)

    def check_resampled_size(self, case_id: str, shape, spacing) -> None:
        """Refuse, before nnU-Net resamples, an image whose grid at the model's spacing would be far larger
        (or smaller) than the training median: 10x the training spacing gave ~650x670x300 voxels and a
        resampling that did not end; spacing written in metres gives a grid of a few voxels."""
        cfg, pm = self.predictor.configuration_manager, self.predictor.plans_manager
        tf = pm.transpose_forward
        shape_t = np.array([shape[i] for i in tf], float)
        spacing_t = np.array([spacing[i] for i in tf], float)
        new = shape_t * spacing_t / np.asarray(cfg.spacing, float)
        median = np.asarray(cfg.median_image_size_in_voxels, float)
        factor = float(np.prod(new) / np.prod(median))
        limit = float(self.postprocessing.get("qc_max_resampled_size_factor",
                                              POSTPROCESSING["qc_max_resampled_size_factor"]))
        where = (f"case {case_id!r}: at the model's spacing {[round(float(x), 3) for x in cfg.spacing]} mm this "
                 f"image ({list(map(int, shape))} voxels of {[round(float(x), 4) for x in spacing]} mm) would be "
                 f"resampled to about {[int(round(x)) for x in new]} voxels, {factor:.3g}x the training median "
                 f"{[int(x) for x in median]}")
        if np.min(spacing) < METRE_SPACING_LIMIT_MM:
            raise DatasetError(f"{where}. Its spacing {list(spacing)} looks like metres, not millimetres: re-export "
                               "the image with its spacing in mm.")
        if factor > limit or factor < 1.0 / limit ** 2 or np.min(new) < 2:
            raise DatasetError(f"{where}; NeoNet refuses more than {limit:g}x (or less than 1/{limit ** 2:g}x: "
                               "postprocessing."
                               "qc_max_resampled_size_factor in neonet_plans.json). Check the spacing in the file "
                               "header, or crop/resample the image to the anatomy the model was trained on.")
