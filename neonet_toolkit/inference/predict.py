"""``neonet_predict``: raw MRI → liver/tumour masks → TLCR → calibrated PNI probability, with QC.

Per case:

1. read the image(s) with the NeoSeg model's reader (nnU-Net naming or converted DICOM);
2. NeoSeg: nnU-Net preprocessing and sliding-window prediction for every fold, logits averaged
   exactly as ``nnUNetv2_predict`` does, exported to the input geometry (the written mask has
   the input's affine and shape); per-fold tumour masks feed the ``fold_disagreement_seg`` flag;
3. TLCR on the NeoNet preprocessed grid: the image and the predicted mask go through the same
   nnU-Net preprocessing as the training ground truth did (``NeoNetPlans``/``3d_fullres``);
4. every fold classifier of the chosen NeoCls run gives a calibrated probability (prior correction,
   then the calibration fitted on its inner out-of-fold predictions); the case probability is their
   mean; the decision is the majority of the per-fold decisions (each fold's probability against
   that fold's own threshold, chosen inside its training fold), a tie decided by the mean
   probability against the mean threshold;
5. QC flags (see :mod:`neonet_toolkit.inference.qc`); no tumour → no probability.

Outputs (all written atomically; a rerun completes only what is missing):
``CASE.nii.gz`` (mask), ``cases/CASE.json`` (the per-case record), ``predictions.csv``,
``predictions.json`` (provenance), and with ``--save-crops`` / ``--saliency``
``crops/CASE_crop.nii.gz``, ``crops/CASE_crop.png``, ``crops/CASE_saliency.nii.gz`` and
``crops/CASE_saliency.png``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from neonet_toolkit import paths
from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.contract import load_dataset_json
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import METRE_SPACING_LIMIT_MM
from neonet_toolkit.dataset.labels import remap_labels, resolve_label_roles
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, POSTPROCESSING, NeoNetPlans
from neonet_toolkit.inference import qc
from neonet_toolkit.inference.inputs import InputCase, scan_inputs, shard
from neonet_toolkit.inference.outputs import (
    CASES_FOLDER,
    ResultKey,
    check_output_target,
    digest_files,
    digest_json,
    foreign_files,
    foreign_tables,
    is_fatal_write_error,
    load_record,
    outputs_of,
    pending_record,
    refuse_foreign,
    refuse_orphans,
    refuse_stale,
)
from neonet_toolkit.inference.classifier import ClassifierEnsemble
from neonet_toolkit.inference.postprocessing import check_output_folder, ensemble_decision
from neonet_toolkit.inference.report import crop_png
from neonet_toolkit.inference.writers import CSV_FIELDS, collect
from neonet_toolkit.models.seg import (
    check_model_folder,
    default_model_folder,
    initialize_predictor,
    label_map_by_name,
    model_folds,
    registered_model,
)
from neonet_toolkit.preprocessing.orientation import canonical_orientation, canonical_tlcr
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.checkpoints import file_sha256
from neonet_toolkit.utilities.identifiers import PLANS_NAME, ResultLayout
from neonet_toolkit.utilities.io import atomic_path, load_json, save_json
from neonet_toolkit.version import __version__

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


class NeoNetPredictor:  # nnU-Net is called in __init__ and per case: both run in paths.nnunet_environment
    """Loads NeoSeg + NeoCls once; ``predict_case`` runs the whole pipeline for one case."""

    @paths.with_nnunet_environment
    def __init__(self, dataset, seg_model: str | Path | None = None, cls_run: str | None = None,
                 folds: Sequence[int] | None = None, device: str = "auto", plans_name: str = PLANS_NAME,
                 trust_checkpoints: bool = False):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


        env = paths.ensure_environment()
        self.dataset_name = paths.find_dataset_name(dataset)
        pp = env["nnUNet_preprocessed"] / self.dataset_name
        self.nplans = NeoNetPlans(pp / NEONET_PLANS_FILE)
        self.device = get_device(device)
        self.dataset_json = load_dataset_json(pp / "dataset.json")
        self.roles = resolve_label_roles(self.dataset_json, self.dataset_name)
        self.image_channel = int((self.dataset_json.get("neonet") or {}).get("image_channel", 0))
        self.fingerprint = load_json(pp / "dataset_fingerprint.json")
        self.neonet_pm = PlansManager(str(pp / f"{self.nplans['nnunet_plans']}.json"))
        self.neonet_cfg = self.neonet_pm.get_configuration(self.nplans["seg_configuration"])

        # NeoSeg
        self.seg_model = Path(seg_model) if seg_model is not None else default_model_folder(self.dataset_name)
        seg_folds = list(folds) if folds is not None else None
        check_model_folder(self.seg_model, seg_folds, trust_checkpoints, verify=False)  # verified by its one load below
        self.trust_checkpoints = bool(trust_checkpoints)
        self.seg_folds = seg_folds if seg_folds is not None else model_folds(self.seg_model)
        dev = torch.device("cuda", self.device.index or 0) if self.device.type == "cuda" else self.device
        self.seg = FoldLogitsPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
        initialize_predictor(self.seg, self.seg_model, self.seg_folds, "checkpoint_final.pth", trust_checkpoints)
        model_json = load_dataset_json(self.seg_model / "dataset.json")
        self.file_ending = model_json["file_ending"]
        self.n_channels = len(model_json["channel_names"])
        reg = registered_model(self.dataset_name) or {}
        self.label_map = label_map_by_name(model_json["labels"], self.dataset_json["labels"],
                                           reg.get("label_names") or None, where=str(self.seg_model))
        # tumour label ids in the seg model's own label space (for the per-fold QC masks)
        self.model_tumor_ids = sorted(int(k) for k, v in self.label_map.items() if v in self.roles.tumor_ids)

        # NeoCls: the fold classifiers of one run (--cls-run, neonet_find_best_configuration's choice, or the rule)
        self.ensemble = ClassifierEnsemble(ResultLayout(self.dataset_name, plans_name), cls_run,
                                           self.seg_folds if folds is not None else None, self.device,
                                           self.nplans.crop_size)
        self.cls_run, self.cls_run_source, self.classifiers = (self.ensemble.run, self.ensemble.source,
                                                               self.ensemble.members)
        gt_meta = pp / "neonet_tlcr" / "gt" / "metadata.json"
        gt_cases = load_json(gt_meta)["cases"].values() if gt_meta.is_file() else []
        # spurious-tumour rule: predicted tumour components smaller than this fraction of the smallest
        # training tumour (by volume) are relabelled as organ before anything else uses the mask
        post = self.nplans.plans.get("postprocessing")
        if post is None:
            raise DatasetError(f"neonet_plans.json of {self.dataset_name} has no 'postprocessing' rules (written by an "
                               f"older NeoNet): run `neonet_plan_and_preprocess -d {self.dataset_name}` to add them "
                               "(trained models and your settings are kept).")
        self.postprocessing = dict(post)
        self.min_component_fraction = float(post["spurious_tumor_fraction"])
        self.min_train_tumor_ml = min((r["tumor_volume_ml"] for r in gt_cases if not r["empty_tumor"]), default=0.0)
        self.min_train_tumor = (min((r["tumor_voxels"] for r in load_json(gt_meta)["cases"].values()
                                     if not r["empty_tumor"]), default=0) if gt_meta.is_file() else 0)
        self.timings: dict[str, float] = {}
        self.model_file_sha256 = {str(f): file_sha256(f) for f in self._model_files()}
        self.model_sha256 = digest_json(sorted(self.model_file_sha256.values()))
        self.reuse_preprocessing = self._same_preprocessing()
        self._preprocessed = None  # (image, properties) on NeoSeg's preprocessed grid, last case
        logger.info("TLCR input: %s", "NeoSeg's own preprocessing, reused (same nnU-Net plans and configuration)"
                    if self.reuse_preprocessing else "the NeoNet plans' preprocessing of image + mask (NeoSeg "
                    "model planned differently)")

    def _model_files(self) -> list[Path]:
        """Every file a result depends on: NeoSeg's plans, dataset.json and fold checkpoints, the NeoNet
        preprocessing plans and fingerprint, and the classifier fold checkpoints (hashed into each case record)."""
        pp = paths.ensure_environment()["nnUNet_preprocessed"] / self.dataset_name
        files = [self.seg_model / "plans.json", self.seg_model / "dataset.json",
                 *(self.seg_model / f"fold_{f}" / "checkpoint_final.pth" for f in self.seg_folds),
                 pp / f"{self.nplans['nnunet_plans']}.json", pp / "dataset_fingerprint.json",
                 *self.ensemble.checkpoint_files()]
        return [f for f in files if f.is_file()]

    def result_settings(self, save_crops: bool, saliency: bool) -> dict:
        """The settings that change a case's outputs (hashed into its record with the input and model hashes)."""
        return {"seg_folds": [str(f) for f in self.seg_folds], "cls_run": self.cls_run,
                "cls_folds": [f for f, _, _ in self.classifiers], "crop_size": list(self.nplans.crop_size),
                "spacing": list(self.nplans["spacing"]), "postprocessing": self.postprocessing,
                "image_channel": self.image_channel, "save_crops": bool(save_crops), "saliency": bool(saliency),
                "version": __version__}

    def result_key(self, case: InputCase, save_crops: bool, saliency: bool) -> ResultKey:
        files = case.extra.get("source_files") or case.files
        try:
            inp = digest_files(files)
        except OSError:  # a case that cannot be read fails anyway; its key only has to differ from a good one
            inp = "unreadable"
        return ResultKey(inp, self.model_sha256, digest_json(self.result_settings(save_crops, saliency)))

    def _same_preprocessing(self) -> bool:
        """True when NeoSeg's preprocessing is exactly the NeoNet plans' (spacing, normalisation,
        transposition, intensity properties): the classifier's grid is then NeoSeg's grid."""
        a, b = self.seg.configuration_manager.configuration, self.neonet_cfg.configuration
        keys = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
                "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs", "preprocessor_name")
        pa, pb = self.seg.plans_manager.plans, self.neonet_pm.plans
        return (all(a.get(k) == b.get(k) for k in keys)
                and pa.get("transpose_forward") == pb.get("transpose_forward")
                and pa.get("foreground_intensity_properties_per_channel")
                == pb.get("foreground_intensity_properties_per_channel"))

    def provenance(self) -> dict:
        return {
            "toolkit": "neonet_toolkit", "version": __version__, "dataset": self.dataset_name,
            "seg_model": str(self.seg_model.resolve()), "seg_folds": [str(f) for f in self.seg_folds],
            "model_sha256": self.model_sha256,
            "model_files_sha256": self.model_file_sha256,
            "cls_run": self.cls_run, "cls_run_source": self.cls_run_source,
            "cls_folds": [f for f, _, _ in self.classifiers],
            "checkpoint_check": ("SKIPPED (--trust-checkpoints): nnU-Net loaded the NeoSeg checkpoints unchecked"
                                 if self.trust_checkpoints else "NeoSeg checkpoints verified loadable with "
                                 "weights_only=True and an allow-list before nnU-Net loaded them"),
            "plans": self.nplans["plans_name"], "nnunet_plans": self.nplans["nnunet_plans"],
            "crop_size": self.nplans.crop_size, "spacing": self.nplans["spacing"],
            **self.ensemble.provenance(),
            "crop_source_used": "pred (NeoSeg masks)",
            "tlcr_grid": ("NeoSeg's preprocessed image and the final mask resampled onto that grid (shared "
                          "preprocessing)"
                          if self.reuse_preprocessing else "NeoNet plans' preprocessing of the image and the "
                          "exported segmentation"),
            "spurious_tumor_rule": f"predicted tumour components smaller than {self.min_component_fraction:g} x the "
                                   f"smallest training tumour ({self.min_train_tumor_ml:.3f} ml) are relabelled as "
                                   "organ in the written mask and before TLCR",
            "qc_flags": qc.QC_FLAGS, "postprocessing": self.postprocessing,
        }

    def _tick(self, key: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + t - t0
        return t

    def segment(self, case: InputCase):
        """(raw-space segmentation in dataset label ids, properties, image data, per-fold tumour masks)."""
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        t0 = time.perf_counter()
        rw = self.seg.plans_manager.image_reader_writer_class()
        data, props = rw.read_images([str(f) for f in case.files])
        self.check_resampled_size(case.case_id, data.shape[1:], props["spacing"])
        pre = self.seg.configuration_manager.preprocessor_class(verbose=False)
        pdata, _, pprops = pre.run_case_npy(data, None, props, self.seg.plans_manager,
                                            self.seg.configuration_manager, self.seg.dataset_json)
        t0 = self._tick("read_preprocess", t0)
        # NeoSeg sees the image in the canonical orientation (axes flipped to point the positive LPS way), and
        # its logits are flipped back: nnU-Net's sliding window pads odd size differences asymmetrically and sums
        # tiles in storage order, so the same anatomy stored mirrored would otherwise get a (slightly) other mask
        dims = [1 + a for a in canonical_orientation(props, self.seg.plans_manager.transpose_forward).flips]
        x = torch.from_numpy(np.ascontiguousarray(np.flip(pdata, dims)) if dims else pdata)
        fold_tumors = []
        tumor_ids = self.model_tumor_ids

        def per_fold(logits):  # nnU-Net's own fold loop calls this once per fold (for the QC flag)
            logits = torch.flip(logits, dims) if dims else logits
            seg_k = self.seg.label_manager.convert_logits_to_segmentation(logits.to("cpu")).numpy()
            fold_tumors.append(np.isin(seg_k, tumor_ids))

        with torch.inference_mode():
            total = self.seg.predict_logits_with_fold_hook(x, per_fold)
            total = torch.flip(total, dims) if dims else total
        if self.reuse_preprocessing:  # the classifier's grid is this grid: keep the preprocessed image
            self._preprocessed = (pdata, pprops)
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            total, self.seg.plans_manager, self.seg.configuration_manager, self.seg.label_manager, pprops)
        seg = np.asarray(seg)
        if any(k != v for k, v in self.label_map.items()):
            seg = remap_labels(seg, self.label_map)
        self._tick("segmentation", t0)
        return seg.astype(np.uint8), props, data, fold_tumors

    def check_resampled_size(self, case_id: str, shape, spacing) -> None:
        """Refuse, before nnU-Net resamples, an image whose grid at the model's spacing would be far larger
        (or smaller) than the training median: 10x the training spacing gave ~650x670x300 voxels and a
        resampling that did not end; spacing written in metres gives a grid of a few voxels."""
        cfg, pm = self.seg.configuration_manager, self.seg.plans_manager
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

    def remove_spurious_tumor(self, seg: np.ndarray, spacing) -> int:
        """Relabel tumour components below ``min_component_fraction`` x the smallest training tumour (ml)
        as organ, in place. Returns the number of relabelled voxels."""
        from scipy.ndimage import label

        if not self.min_train_tumor_ml:
            return 0
        tumor = np.isin(seg, self.roles.tumor_ids)
        comps, n = label(tumor, structure=np.ones((3, 3, 3)))
        if n == 0:
            return 0
        voxel_ml = float(np.prod(spacing)) / 1000.0
        sizes = np.bincount(comps.ravel())[1:] * voxel_ml
        small = np.flatnonzero(sizes < self.min_component_fraction * self.min_train_tumor_ml) + 1
        if small.size == 0:
            return 0
        drop = np.isin(comps, small)
        seg[drop] = self.roles.organ_ids[0]
        return int(drop.sum())

    def crop(self, data: np.ndarray, seg: np.ndarray, props: dict):
        """TLCR on the NeoNet preprocessed grid, in the canonical orientation of the image geometry
        (:mod:`neonet_toolkit.preprocessing.orientation`, as the training patches): the same anatomy gives
        the same crop whatever the storage order's axis directions. ``info.canonical_flips`` records the flips."""
        t0 = time.perf_counter()
        if self.reuse_preprocessing and self._preprocessed is not None:
            d, pprops = self._preprocessed
            self._preprocessed = None
            s = self._mask_on_grid(seg, props, pprops, d.shape[1:])
        else:
            pre = self.neonet_cfg.preprocessor_class(verbose=False)
            d, s, _ = pre.run_case_npy(data, seg[None].astype(np.int16), dict(props), self.neonet_pm,
                                       self.neonet_cfg, self.dataset_json)
        orientation = canonical_orientation(props, self.neonet_pm.transpose_forward)
        img_p, lab_p, info = canonical_tlcr(d[self.image_channel], s[0], self.roles, self.nplans.crop_size,
                                            orientation)
        self._tick("tlcr", t0)
        return img_p, lab_p, info

    def _mask_on_grid(self, seg: np.ndarray, props: dict, pprops: dict, grid_shape) -> np.ndarray:
        """The final mask (raw space, after postprocessing) on NeoSeg's preprocessed grid: the seg half of
        nnU-Net's ``run_case_npy`` (transpose, the image's nonzero crop, ``resampling_fn_seg``) without
        the image half, which NeoSeg already did. Same mask as preprocessing image + mask again."""
        pm, cfg = self.neonet_pm, self.neonet_cfg
        s = seg[None].astype(np.int16).transpose([0, *[i + 1 for i in pm.transpose_forward]])
        s = s[(slice(None), *[slice(a, b) for a, b in pprops["bbox_used_for_cropping"]])]
        spacing = [props["spacing"][i] for i in pm.transpose_forward]
        return cfg.resampling_fn_seg(s, list(grid_shape), spacing, cfg.spacing)

    def classify(self, patch: np.ndarray) -> list[float]:
        t0 = time.perf_counter()
        probs = self.ensemble.classify(patch)
        self._tick("classification", t0)
        return probs

    def saliency(self, patch: np.ndarray) -> np.ndarray:
        return self.ensemble.saliency(patch)

    @paths.with_nnunet_environment
    def predict_case(self, case: InputCase, out: Path, save_crops: bool = False, saliency: bool = False,
                     key: ResultKey | None = None) -> dict:
        key = key or self.result_key(case, save_crops, saliency)
        # a pending record first: if the run dies before the final record, the next run knows these files are
        # NeoNet's (and redoes the case) instead of refusing them as someone else's
        save_json(pending_record(case.case_id, self.file_ending, key), out / CASES_FOLDER / f"{case.case_id}.json")
        seg, props, data, fold_tumors = self.segment(case)
        removed = self.remove_spurious_tumor(seg, props["spacing"])
        t0 = time.perf_counter()
        rw = self.seg.plans_manager.image_reader_writer_class()
        target = out / f"{case.case_id}{self.file_ending}"
        with atomic_path(target, suffix=self.file_ending) as tmp:
            rw.write_seg(seg, str(tmp), props)
        t0 = self._tick("export", t0)
        img_p, lab_p, info = self.crop(data, seg, props)
        flags = []
        organ, tumor = self.roles.masks(seg)
        spacing = [float(s) for s in props["spacing"]]
        post = self.postprocessing
        if qc.spacing_flag(spacing, self.fingerprint["spacings"], tuple(post["qc_spacing_tolerance"])):
            flags.append("spacing_out_of_range")
        fp_ch = self.fingerprint["foreground_intensity_properties_per_channel"].get(str(self.image_channel))
        if fp_ch and qc.intensity_flag(data[self.image_channel], organ | tumor, fp_ch):
            flags.append("intensity_out_of_range")
        # not an MRI of the kind trained on (constant, near-constant, flat organ): no decision is given
        flags += qc.image_kind_flags(data[self.image_channel], organ | tumor, fp_ch)
        dis, fold_dice = qc.fold_seg_disagreement(fold_tumors, float(post["qc_fold_dice_min"]))
        if dis:
            flags.append("fold_disagreement_seg")
        rec = {"case_id": case.case_id, "input": [str(f) for f in case.files], "source": case.source,
               "segmentation": target.name, "spacing": spacing, "tumor_voxels": int(tumor.sum()),
               "tumor_volume_ml": float(tumor.sum() * np.prod(spacing) / 1000.0),
               "fold_tumor_dice": fold_dice, "spurious_tumor_voxels_removed": removed, "tlcr": info.to_dict()}
        if info.empty_tumor:
            flags.insert(0, "no_tumor")
        if set(flags) & qc.WITHHOLDING_FLAGS:
            rec.update(probability=None, decision=None, fold_probabilities={},
                       withheld_because=sorted(set(flags) & qc.WITHHOLDING_FLAGS))
        else:
            if info.tumor_clipped:
                flags.append("tumor_exceeds_crop")
            if qc.crop_border_flag(lab_p[1]):
                flags.append("tumor_at_crop_border")
            if self.min_train_tumor and info.tumor_voxels < self.min_train_tumor:
                flags.append("small_tumor")
            probs = self.classify(img_p)
            thresholds = [float(i["threshold"]) for _, _, i in self.classifiers]
            p, decision, thr = ensemble_decision(probs, thresholds)
            if qc.fold_cls_disagreement(probs, float(self.postprocessing["qc_fold_probability_spread_max"])):
                flags.append("fold_disagreement_cls")
            if any(i.get("crop_source", "gt") == "gt" for _, _, i in self.classifiers):
                flags.append("gt_trained_classifier_on_predicted_mask")
            rec.update(probability=p, decision=decision, threshold=thr,
                       fold_decisions={str(f): int(q >= t) for (f, _, _), q, t in zip(self.classifiers, probs,
                                                                                     thresholds)},
                       fold_probabilities={str(f): q for (f, _, _), q in zip(self.classifiers, probs)})
            if save_crops or saliency:
                t0 = time.perf_counter()
                self._write_crops(out, case.case_id, img_p, lab_p, saliency)
                self._tick("export", t0)
        rec["qc_flags"] = flags
        rec["result_key"] = key.to_dict()
        rec["outputs"] = outputs_of(out, case.case_id, self.file_ending)
        save_json(rec, out / CASES_FOLDER / f"{case.case_id}.json")
        return rec

    def _write_crops(self, out: Path, cid: str, img_p: np.ndarray, lab_p: np.ndarray, saliency: bool) -> None:
        import SimpleITK as sitk


        folder = out / "crops"
        folder.mkdir(parents=True, exist_ok=True)
        # crops are on the preprocessed grid (array order = nnU-Net's transposed axes)
        spacing = list(self.nplans["spacing"])

        def write(arr, name):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(tuple(float(s) for s in spacing[::-1]))
            with atomic_path(folder / name, suffix=".nii.gz") as tmp:
                sitk.WriteImage(im, str(tmp), useCompression=True)

        for ch in range(img_p.shape[0]):
            write(img_p[ch], f"{cid}_crop_{ch:04d}.nii.gz")
        write((lab_p[0] + lab_p[1]).astype(np.uint8), f"{cid}_crop_mask.nii.gz")
        sal = self.saliency(img_p) if saliency else None
        if sal is not None:
            write(sal, f"{cid}_saliency.nii.gz")
        crop_png(img_p, lab_p, folder / f"{cid}_crop.png", saliency=sal, title=cid, spacing=self.nplans["spacing"])


def plan_batch(out: Path, cases: list[InputCase], predictor: NeoNetPredictor, save_crops: bool, saliency: bool,
               overwrite: bool) -> tuple[list[InputCase], list[InputCase], dict[str, ResultKey]]:
    """(complete, to compute, result keys) for this batch; stops before any work when the output folder
    holds files NeoNet did not write, or results these inputs/models/settings would not reproduce (unless
    ``overwrite``: then they are computed again)."""
    tables = foreign_tables(out, CSV_FIELDS)
    problems = {"": tables} if tables else {}
    stale, done, todo, keys = {}, [], [], {}
    for c in cases:
        keys[c.case_id] = key = predictor.result_key(c, save_crops, saliency)
        rec = load_record(out, c.case_id)
        bad = foreign_files(out, c.case_id, predictor.file_ending, rec)
        if bad:
            problems[c.case_id] = bad
            continue
        if overwrite or rec is None or rec.get("status") in ("failed", "pending"):
            todo.append(c)
            continue
        reason = key.stale_reason(rec)
        complete = (out / f"{c.case_id}{predictor.file_ending}").is_file()
        if reason is None and complete:
            done.append(c)
        elif reason is None:
            todo.append(c)
        else:
            stale[c.case_id] = reason
    # records of cases this run does not see (another input folder, another part) must come from the same
    # models, or predictions.csv would list them under this run's provenance
    ours, orphans = {c.case_id for c in cases}, []
    for f in sorted((out / CASES_FOLDER).glob("*.json")) if (out / CASES_FOLDER).is_dir() else []:
        rec = load_record(out, f.stem)
        if f.stem in ours or rec is None or rec.get("status") == "pending":
            continue
        if (rec.get("result_key") or {}).get("model_sha256") != predictor.model_sha256:
            orphans.append(f.stem)
    refuse_foreign(out, problems)
    refuse_orphans(out, orphans)  # --overwrite cannot redo a case whose input is not here
    if not overwrite:
        refuse_stale(out, stale)
    return done, todo, keys


def predict(input_folder: str | Path, output_folder: str | Path, dataset, seg_model=None, cls_run=None,
            folds=None, device: str = "auto", save_crops: bool = False, saliency: bool = False, num_parts: int = 1,
            part_id: int = 0, overwrite: bool = False, trust_checkpoints: bool = False) -> dict:
    """Run the whole pipeline on a folder; returns {'cases': [...], 'timings_s': {...}, 'skipped': [...]}."""
    from tqdm import tqdm

    out = Path(output_folder)
    check_output_folder(input_folder, out)
    check_output_target(out)
    predictor = NeoNetPredictor(dataset, seg_model=seg_model, cls_run=cls_run, folds=folds, device=device,
                                trust_checkpoints=trust_checkpoints)
    scan = scan_inputs(input_folder, predictor.file_ending, predictor.n_channels, work_folder=out / ".work" / "dicom")
    mine = shard(scan.cases, num_parts, part_id)
    for c in mine:
        check_case_id(c.case_id)
    done, todo, keys = plan_batch(out, mine, predictor, save_crops, saliency, overwrite)
    if done:
        logger.info("%d case(s) already complete in %s for these inputs, models and settings (use --overwrite to "
                    "redo): %s", len(done), out, [c.case_id for c in done][:10])
    failed, stopped = [], None
    for c in tqdm(todo, desc="neonet_predict", unit="case", disable=None):
        try:
            if c.error:
                raise DatasetError(c.error)
            rec = predictor.predict_case(c, out, save_crops=save_crops, saliency=saliency, key=keys[c.case_id])
            logger.info("%s: probability=%s flags=%s", c.case_id, rec["probability"], rec["qc_flags"])
        except Exception as e:  # one bad case never sinks the batch: record it, go on, exit non-zero
            if is_fatal_write_error(e):  # disk full, read-only: no later case can be written either
                stopped = f"writing case {c.case_id!r} failed ({e.strerror or e}: {getattr(e, 'filename', '')})"
                logger.error("%s: the batch stops", stopped)
                break
            reason = str(e).splitlines()[0] if isinstance(e, DatasetError) else f"{type(e).__name__}: {e}"
            logger.error("%s: FAILED (%s)", c.case_id, reason)
            failed.append(c.case_id)
            save_json({"case_id": c.case_id, "status": "failed", "error": reason, "probability": None,
                       "decision": None, "fold_probabilities": {}, "qc_flags": [],
                       "input_files": [str(f) for f in c.files], "result_key": keys[c.case_id].to_dict(),
                       "outputs": {}}, out / CASES_FOLDER / f"{c.case_id}.json")
    if stopped is not None:
        complete = [c.case_id for c in todo[:todo.index(c)] if c.case_id not in failed] + [d.case_id for d in done]
        try:
            collect(out, {**predictor.provenance(), "unused_inputs": scan.unused_dict()})
            written = f"predictions.csv lists the {len(complete)} complete case(s)"
        except OSError as e:
            written = f"predictions.csv could not be written either ({e.strerror or e}); the complete cases' " \
                      f"records are in {out / CASES_FOLDER}"
        raise DatasetError(f"{stopped}. The batch stopped: {written}. Free space (or fix permissions) and rerun the "
                           "same command: complete cases are kept, the rest are computed.")
    recs = collect(out, {**predictor.provenance(), "unused_inputs": scan.unused_dict()})
    return {"cases": recs, "predicted": [c for c in (x.case_id for x in todo) if c not in failed],
            "failed": failed, "skipped": [c.case_id for c in done], "timings_s": dict(predictor.timings)}
