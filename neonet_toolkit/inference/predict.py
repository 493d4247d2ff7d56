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

from neonet_toolkit import paths
from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.contract import load_dataset_json
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.inference import qc
from neonet_toolkit.inference.classifier import ClassifierEnsemble
from neonet_toolkit.inference.crop_step import CropStep
from neonet_toolkit.inference.dicom_out import attach_dicom_sources, write_dicom_results
from neonet_toolkit.inference.inputs import InputCase, scan_inputs, shard
from neonet_toolkit.inference.outputs import (
    CASES_FOLDER,
    DICOM_FOLDER,
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
from neonet_toolkit.inference.postprocessing import check_output_folder, ensemble_decision
from neonet_toolkit.inference.segmenter import SegmentationEnsemble, remove_spurious_tumor
from neonet_toolkit.inference.writers import CSV_FIELDS, collect
from neonet_toolkit.models.package import check_package_dataset, opened_package
from neonet_toolkit.utilities.checkpoints import file_sha256
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.identifiers import PLANS_NAME, ResultLayout
from neonet_toolkit.utilities.io import load_json, save_json
from neonet_toolkit.version import __version__

logger = logging.getLogger(__name__)




class NeoNetPredictor:  # nnU-Net is called in __init__ and per case: both run in paths.nnunet_environment
    """NeoSeg + TLCR + NeoCls + QC for one dataset's models, loaded once; ``predict_case`` runs one case.

    Composed of a :class:`~neonet_toolkit.inference.segmenter.SegmentationEnsemble` (``self.segmenter``), a
    :class:`~neonet_toolkit.inference.crop_step.CropStep` (``self.cropper``), a
    :class:`~neonet_toolkit.inference.classifier.ClassifierEnsemble` (``self.ensemble``) and a
    :class:`~neonet_toolkit.inference.qc.CaseQC` (``self.qc``); this class wires them, hashes what a result depends
    on, and writes the case record."""

    @paths.with_nnunet_environment
    def __init__(self, dataset, seg_model: str | Path | None = None, cls_run: str | None = None,
                 folds: Sequence[int] | None = None, device: str = "auto", plans_name: str = PLANS_NAME,
                 trust_checkpoints: bool = False):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        env = paths.ensure_environment()
        self.layout = ResultLayout(paths.find_dataset_name(dataset), plans_name)  # the dataset, resolved once
        self.dataset_name = self.layout.dataset_name
        pp = env["nnUNet_preprocessed"] / self.dataset_name
        self.nplans = NeoNetPlans(pp / NEONET_PLANS_FILE)
        self.device = get_device(device)
        self.dataset_json = load_dataset_json(pp / "dataset.json")
        self.roles = resolve_label_roles(self.dataset_json, self.dataset_name)
        self.image_channel = int((self.dataset_json.get("neonet") or {}).get("image_channel", 0))
        self.fingerprint = load_json(pp / "dataset_fingerprint.json")
        post = self.nplans.plans.get("postprocessing")
        if post is None:
            raise DatasetError(f"neonet_plans.json of {self.dataset_name} has no 'postprocessing' rules (written by an "
                               f"older NeoNet): run `neonet_plan_and_preprocess -d {self.dataset_name}` to add them "
                               "(trained models and your settings are kept).")
        self.postprocessing = dict(post)
        self.timings: dict[str, float] = {}

        self.segmenter = SegmentationEnsemble(self.dataset_name, self.dataset_json, self.roles, self.postprocessing,
                                              seg_model, folds, self.device, trust_checkpoints, self.timings)
        self.seg_model, self.seg_folds = self.segmenter.model_folder, self.segmenter.folds
        self.file_ending, self.n_channels = self.segmenter.file_ending, self.segmenter.n_channels
        self.trust_checkpoints = bool(trust_checkpoints)

        # NeoCls: the fold classifiers of one run (--cls-run, neonet_find_best_configuration's choice, or the rule)
        self.ensemble = ClassifierEnsemble(self.layout, cls_run, self.seg_folds if folds is not None else None,
                                           self.device, self.nplans.crop_size)
        self.cls_run, self.cls_run_source, self.classifiers = (self.ensemble.run, self.ensemble.source,
                                                               self.ensemble.members)

        neonet_pm = PlansManager(str(pp / f"{self.nplans['nnunet_plans']}.json"))
        neonet_cfg = neonet_pm.get_configuration(self.nplans["seg_configuration"])
        self.reuse_preprocessing = CropStep.same_preprocessing(
            self.segmenter.plans_manager, self.segmenter.configuration_manager, neonet_pm, neonet_cfg)
        self.cropper = CropStep(neonet_pm, neonet_cfg, self.dataset_json, self.roles, self.nplans.crop_size,
                                self.nplans["spacing"], self.image_channel, self.reuse_preprocessing, self.timings)

        gt_meta = pp / "neonet_tlcr" / "gt" / "metadata.json"
        gt_cases = [r for r in load_json(gt_meta)["cases"].values() if not r["empty_tumor"]] \
            if gt_meta.is_file() else []
        # spurious-tumour rule: predicted tumour components smaller than this fraction of the smallest
        # training tumour (by volume) are relabelled as organ before anything else uses the mask
        self.min_component_fraction = float(post["spurious_tumor_fraction"])
        self.min_train_tumor_ml = min((r["tumor_volume_ml"] for r in gt_cases), default=0.0)
        self.min_train_tumor = min((r["tumor_voxels"] for r in gt_cases), default=0)
        self.qc = qc.CaseQC(self.fingerprint, self.postprocessing, self.image_channel, self.min_train_tumor)

        self.model_file_sha256 = {str(f): file_sha256(f) for f in self._model_files()}
        self.model_sha256 = digest_json(sorted(self.model_file_sha256.values()))
        logger.info("TLCR input: %s", "NeoSeg's own preprocessing, reused (same nnU-Net plans and configuration)"
                    if self.reuse_preprocessing else "the NeoNet plans' preprocessing of image + mask (NeoSeg "
                    "model planned differently)")

    def _model_files(self) -> list[Path]:
        """Every file a result depends on: NeoSeg's plans, dataset.json and fold checkpoints, the NeoNet
        preprocessing plans and fingerprint, and the classifier fold checkpoints (hashed into each case record)."""
        pp = paths.ensure_environment()["nnUNet_preprocessed"] / self.dataset_name
        files = [*self.segmenter.files(), pp / f"{self.nplans['nnunet_plans']}.json", pp / "dataset_fingerprint.json",
                 *self.ensemble.checkpoint_files()]
        return [f for f in files if f.is_file()]

    def result_settings(self, save_crops: bool, saliency: bool, dicom_out: bool = False) -> dict:
        """The settings that change a case's outputs (hashed into its record with the input and model hashes)."""
        return {"seg_folds": [str(f) for f in self.seg_folds], "cls_run": self.cls_run,
                "cls_folds": [f for f, _, _ in self.classifiers], "crop_size": list(self.nplans.crop_size),
                "spacing": list(self.nplans["spacing"]), "postprocessing": self.postprocessing,
                "image_channel": self.image_channel, "save_crops": bool(save_crops), "saliency": bool(saliency),
                "version": __version__, **({"dicom_out": True} if dicom_out else {})}

    def result_key(self, case: InputCase, save_crops: bool, saliency: bool, dicom_out: bool = False) -> ResultKey:
        files = [*(case.extra.get("source_files") or case.files), *case.extra.get("dicom_reference_files", [])]
        try:
            inp = digest_files(files)
        except OSError:  # a case that cannot be read fails anyway; its key only has to differ from a good one
            inp = "unreadable"
        return ResultKey(inp, self.model_sha256, digest_json(self.result_settings(save_crops, saliency, dicom_out)))

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

    def remove_spurious_tumor(self, seg: np.ndarray, spacing) -> int:
        """The plans' spurious-tumour rule on a final mask, in place (:func:`~.segmenter.remove_spurious_tumor`)."""
        return remove_spurious_tumor(seg, spacing, self.roles, self.min_train_tumor_ml, self.min_component_fraction)

    def crop(self, data: np.ndarray, seg: np.ndarray, props: dict, preprocessed: tuple | None = None):
        return self.cropper.crop(data, seg, props, preprocessed)

    def classify(self, patch: np.ndarray) -> list[float]:
        t0 = time.perf_counter()
        probs = self.ensemble.classify(patch)
        self.timings["classification"] = self.timings.get("classification", 0.0) + time.perf_counter() - t0
        return probs

    @paths.with_nnunet_environment
    def predict_case(self, case: InputCase, out: Path, save_crops: bool = False, saliency: bool = False,
                     key: ResultKey | None = None, dicom_out: bool = False) -> dict:
        key = key or self.result_key(case, save_crops, saliency, dicom_out)
        # a pending record first: if the run dies before the final record, the next run knows these files are
        # NeoNet's (and redoes the case) instead of refusing them as someone else's
        save_json(pending_record(case.case_id, self.file_ending, key), out / CASES_FOLDER / f"{case.case_id}.json")
        seg, props, data, fold_tumors, preprocessed = self.segmenter.segment(case)
        removed = self.remove_spurious_tumor(seg, props["spacing"])
        target = out / f"{case.case_id}{self.file_ending}"
        self.segmenter.write_mask(seg, props, target)
        img_p, lab_p, info = self.crop(data, seg, props, preprocessed)
        del preprocessed
        organ, tumor = self.roles.masks(seg)
        spacing = [float(s) for s in props["spacing"]]
        flags, fold_dice = self.qc.image_flags(data, organ | tumor, spacing, fold_tumors)
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
            flags += self.qc.crop_flags(info, lab_p[1])
            probs = self.classify(img_p)
            thresholds = [float(i["threshold"]) for _, _, i in self.classifiers]
            p, decision, thr = ensemble_decision(probs, thresholds)
            flags += self.qc.classifier_flags(probs, [i.get("crop_source", "gt") for _, _, i in self.classifiers])
            rec.update(probability=p, decision=decision, threshold=thr,
                       fold_decisions={str(f): int(q >= t) for (f, _, _), q, t in zip(self.classifiers, probs,
                                                                                     thresholds)},
                       fold_probabilities={str(f): q for (f, _, _), q in zip(self.classifiers, probs)})
            if save_crops or saliency:
                self.cropper.write_crops(out / "crops", case.case_id, img_p, lab_p,
                                         self.ensemble.saliency if saliency else None)
        rec["qc_flags"] = flags
        if dicom_out:  # SEG + SR beside the other outputs, from the final mask and this record
            written = write_dicom_results(case.case_id, case.extra["dicom_source_files"], target, rec, self.roles,
                                          out / DICOM_FOLDER, self.model_sha256)
            rec["dicom"] = {k: f.relative_to(out).as_posix() for k, f in written.items()}
        rec["result_key"] = key.to_dict()
        rec["outputs"] = outputs_of(out, case.case_id, self.file_ending)
        save_json(rec, out / CASES_FOLDER / f"{case.case_id}.json")
        return rec


def plan_batch(out: Path, cases: list[InputCase], predictor: NeoNetPredictor, save_crops: bool, saliency: bool,
               overwrite: bool, dicom_out: bool = False) -> tuple[list[InputCase], list[InputCase], dict[str, ResultKey]]:
    """(complete, to compute, result keys) for this batch; stops before any work when the output folder
    holds files NeoNet did not write, or results these inputs/models/settings would not reproduce (unless
    ``overwrite``: then they are computed again)."""
    tables = foreign_tables(out, CSV_FIELDS)
    problems = {"": tables} if tables else {}
    stale, done, todo, keys = {}, [], [], {}
    for c in cases:
        keys[c.case_id] = key = predictor.result_key(c, save_crops, saliency, dicom_out)
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
            part_id: int = 0, overwrite: bool = False, trust_checkpoints: bool = False, dicom_out: bool = False,
            dicom_reference: str | Path | None = None, model_package: str | Path | None = None) -> dict:
    """Run the whole pipeline on a folder; returns {'cases': [...], 'timings_s': {...}, 'skipped': [...]}.

    ``model_package``: a model zip or extracted folder (``neonet_export_model``): verified, then the prediction runs
    from its folders only (``dataset`` may be None; given, it must be the package's)."""
    from tqdm import tqdm

    if model_package is not None:
        with opened_package(model_package) as pkg:
            check_package_dataset(pkg, dataset)
            return predict(input_folder, output_folder, pkg.dataset_name,
                           seg_model=seg_model if seg_model is not None else pkg.seg_model,
                           cls_run=cls_run if cls_run is not None else pkg.cls_run,
                           folds=folds if folds is not None else pkg.folds, device=device, save_crops=save_crops,
                           saliency=saliency, num_parts=num_parts, part_id=part_id, overwrite=overwrite,
                           trust_checkpoints=trust_checkpoints, dicom_out=dicom_out, dicom_reference=dicom_reference)

    out = Path(output_folder)
    check_output_folder(input_folder, out)
    check_output_target(out)
    predictor = NeoNetPredictor(dataset, seg_model=seg_model, cls_run=cls_run, folds=folds, device=device,
                                trust_checkpoints=trust_checkpoints)
    scan = scan_inputs(input_folder, predictor.file_ending, predictor.n_channels, work_folder=out / ".work" / "dicom")
    mine = shard(scan.cases, num_parts, part_id)
    for c in mine:
        check_case_id(c.case_id)
    if dicom_out:
        attach_dicom_sources(mine, dicom_reference)
    elif dicom_reference is not None:
        raise DatasetError("--dicom-reference only serves --dicom-out: add --dicom-out, or leave it out.")
    done, todo, keys = plan_batch(out, mine, predictor, save_crops, saliency, overwrite, dicom_out)
    if done:
        logger.info("%d case(s) already complete in %s for these inputs, models and settings (use --overwrite to "
                    "redo): %s", len(done), out, [c.case_id for c in done][:10])
    failed, stopped = [], None
    for c in tqdm(todo, desc="neonet_predict", unit="case", disable=None):
        try:
            if c.error:
                raise DatasetError(c.error)
            rec = predictor.predict_case(c, out, save_crops=save_crops, saliency=saliency, key=keys[c.case_id],
                                         dicom_out=dicom_out)
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
