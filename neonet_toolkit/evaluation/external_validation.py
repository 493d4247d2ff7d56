"""External validation of a locked NeoNet model on another site's cohort (``neonet_validate``).

Reading the external cohort (``case_labels.csv``, matching it to the images, which cases enter the analyses) and
:func:`validate`, the orchestration behind ``neonet_validate`` (open the model package, run ``neonet_predict`` on
every case, then the analyses and the report; ``neonet_toolkit.run.validate`` only parses the command line).
Evaluation and inference share a layer, so this module may call the predictor. The analyses live in
:mod:`~neonet_toolkit.evaluation.validation_stats` (discrimination, calibration, clinical usefulness, subgroups,
segmentation), :mod:`~neonet_toolkit.evaluation.dataset_shift`, :mod:`~neonet_toolkit.evaluation.recalibration`
(model updating) and :mod:`~neonet_toolkit.evaluation.validation_report` (figures and report).

Every section of ``validation_report.md`` names the TRIPOD+AI (Collins et al., BMJ 2024;385:e078378) item it
answers. The numbers were checked against the statement's Table 2 (27 items, 52 subitems): 11 missing data, 12d
heterogeneity across clusters, 12e performance measures and plots, 12f model updating (methods), 16 training versus
evaluation data, 20c comparison with the development data, 21 participants and outcome events in each analysis, 23a
performance with CIs incl. key subgroups, 23b heterogeneity across clusters (results), 24 model updating (results):

* 21 / 11 participants and outcome events: cases included, cases omitted and why (no tumour, withheld, failed),
  events and non-events among the included;
* 12e / 23a discrimination: AUC with the toolkit's DeLong CI and a stratified percentile bootstrap CI; ROC;
* 12e / 23a calibration: calibration-in-the-large, calibration slope, a flexible calibration curve with a
  case-bootstrap band, observed/expected ratio, Brier and scaled Brier, ECE;
* 12e / 23a clinical usefulness: sensitivity, specificity, PPV, NPV of the model's locked decisions with Wilson
  95 % CIs; decision curve from ``dcurves``;
* 12d / 23b per ``site`` / ``scanner`` subgroup, with a warning below
  :data:`~neonet_toolkit.evaluation.validation_stats.SUBGROUP_MIN_CASES` cases or
  :data:`~neonet_toolkit.evaluation.validation_stats.SUBGROUP_MIN_PER_CLASS` of either class;
* 23a NeoSeg Dice per label where external labels exist, and the classifier's performance in good vs poor
  segmentation cases;
* 16 / 20c dataset shift: per-case fingerprint against the training fingerprint stored in the model;
* 12f / 24 model updating: ``intercept`` or ``logistic`` recalibration, written as a new model version.
"""
from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.contract import (
    CASE_LABELS_FILE,
    DEFAULT_TARGET,
    load_dataset_json,
    read_case_labels,
)
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.evaluation.dataset_shift import (
    case_fingerprint,
    read_training_tlcr,
    shift_analysis,
    training_reference,
)
from neonet_toolkit.evaluation.recalibration import (
    RECALIBRATION_METHODS,
    fit_recalibration,
    model_hash,
    recalibrated_analysis,
    write_recalibrated_model,
)
from neonet_toolkit.evaluation.validation_report import write_report
from neonet_toolkit.evaluation.validation_stats import (
    GROUP_COLUMNS,
    SUBGROUP_MIN_CASES,
    SUBGROUP_MIN_PER_CLASS,
    analyse,
    dice_per_label,
    segmentation_analysis,
)
from neonet_toolkit.inference.inputs import scan_inputs
from neonet_toolkit.inference.outputs import CASES_FOLDER, load_record
from neonet_toolkit.inference.predict import predict
from neonet_toolkit.models.package import opened_package
from neonet_toolkit.utilities.identifiers import (
    FINAL_CHECKPOINT,
    PLANS_NAME,
    ResultLayout,
)
from neonet_toolkit.utilities.io import load_json
from neonet_toolkit.version import __version__

logger = logging.getLogger(__name__)


def read_external_labels(csv_path: str | Path, target: str = "PNI") -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """(labels, groups) from the external ``case_labels.csv``: ``case_id,<target>[,site][,scanner]``; labels must be
    0/1 (each bad row named, with the fix); ``groups``: ``{column: {case: value}}`` for the optional columns (an
    empty value is "unknown")."""
    csv_path = Path(csv_path)
    labels = read_case_labels(csv_path, target)
    text = csv_path.read_bytes().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = {(h or "").strip(): h for h in reader.fieldnames or []}
    groups: dict[str, dict[str, str]] = {}
    for col in GROUP_COLUMNS:
        if col in header:
            groups[col] = {}
    if groups:
        for row in reader:
            cid = (row.get(header["case_id"]) or "").strip()
            for col in groups:
                groups[col][cid] = (row.get(header[col]) or "").strip() or "unknown"
    return labels, groups


def match_cases(labels: dict[str, int], image_ids: Sequence[str], csv_path: str | Path, image_folder: str | Path
                ) -> list[str]:
    """The validated case ids; a CSV id without an image, or an image without a CSV row, is refused by name."""
    images = set(image_ids)
    no_image = sorted(set(labels) - images)
    no_label = sorted(images - set(labels))
    problems = []
    if no_image:
        problems.append(f"{csv_path} lists {len(no_image)} case(s) with no image in {image_folder}: {no_image[:20]}"
                        f"{' ...' if len(no_image) > 20 else ''}. Add their images (CASE_0000 files) or remove "
                        "their rows from the CSV.")
    if no_label:
        problems.append(f"{image_folder} holds {len(no_label)} case(s) without a row in {csv_path}: {no_label[:20]}"
                        f"{' ...' if len(no_label) > 20 else ''}. Add a row 'case_id,label' for each, or move "
                        "their images out of the folder.")
    if problems:
        raise DatasetError(problems)
    for c in labels:
        check_case_id(c, where=str(csv_path))
    return sorted(labels)


def cohort_table(case_ids: Sequence[str], labels: dict[str, int], records: dict[str, dict],
                 groups: dict[str, dict[str, str]] | None = None) -> dict:
    """Which cases enter the analyses: ``included`` (a probability), ``no_tumor`` (NeoSeg found no tumour: no
    probability; excluded from AUC and calibration, counted), ``withheld`` (another QC flag withheld the
    probability), ``failed`` (neonet_predict failed on the case)."""
    rows = []
    for cid in case_ids:
        rec = records.get(cid) or {"status": "failed", "error": "no prediction record"}
        if rec.get("status") in ("failed", "pending"):
            status = "failed"
        elif rec.get("probability") is None:
            status = "no_tumor" if "no_tumor" in (rec.get("qc_flags") or []) else "withheld"
        else:
            status = "included"
        row = {"case_id": cid, "label": int(labels[cid]), "status": status,
               "probability": rec.get("probability"), "decision": rec.get("decision"),
               "qc_flags": rec.get("qc_flags") or [], "reason": rec.get("error") or
               ", ".join(rec.get("withheld_because") or [])}
        for col, m in (groups or {}).items():
            row[col] = m.get(cid, "unknown")
        rows.append(row)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("included", "no_tumor", "withheld", "failed")}
    return {"rows": rows, "counts": counts}


PREDICTIONS_FOLDER = "predictions"


def _image_folder(ext: Path, images: str | None) -> Path:
    if images is not None:
        if images not in ("imagesTs", "imagesTr"):
            raise DatasetError(f"--images {images!r}: use imagesTs or imagesTr.")
        if not (ext / images).is_dir():
            raise DatasetError(f"{ext / images} does not exist.")
        return ext / images
    found = [ext / n for n in ("imagesTs", "imagesTr") if (ext / n).is_dir() and any((ext / n).iterdir())]
    if not found:
        raise DatasetError(f"{ext} has no imagesTs/ or imagesTr/ with images: put the external cases there "
                           "(CASE_0000.nii.gz, nnU-Net naming) next to case_labels.csv.")
    if len(found) > 1:
        raise DatasetError(f"{ext} has both imagesTs/ and imagesTr/: choose the cohort with --images imagesTs or "
                           "--images imagesTr.")
    return found[0]


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _case_features(records: dict[str, dict], pred_out: Path, roles, image_channel: int, label_folder: Path | None,
                   file_ending: str, ref_labels: dict | None = None) -> tuple[list[dict], dict[str, dict]]:
    """(per-case fingerprints, per-case Dice against the external labels) of the cases with a mask."""
    fps, dice = [], {}
    for cid, rec in sorted(records.items()):
        if rec.get("status") in ("failed", "pending") or not rec.get("segmentation"):
            continue
        try:
            image = _read(Path(rec["input"][image_channel]))
            seg = _read(pred_out / rec["segmentation"])
        except (RuntimeError, OSError, IndexError) as e:
            logger.warning("%s: image or mask not readable for the shift analysis (%s); left out", cid, e)
            continue
        organ, tumor = roles.masks(seg)
        fp = case_fingerprint(image, organ | tumor, rec)
        fp["tumor_voxels"] = rec.get("tumor_voxels")
        fps.append(fp)
        ref = label_folder / f"{cid}{file_ending}" if label_folder is not None else None
        if ref is not None and ref.is_file():
            gt = _read(ref)
            if gt.shape != seg.shape:
                logger.warning("%s: external label %s has shape %s, the image %s; no Dice", cid, ref, gt.shape,
                               seg.shape)
                continue
            dice[cid] = dice_per_label(seg, gt, dict(roles.labels), ref_labels)
    return fps, dice


def validate(model: str | Path, external_dataset: str | Path, output: str | Path, recalibrate: str | None = None,
             device: str = "auto", images: str | None = None, n_boot: int = 2000, seed: int = 0,
             overwrite: bool = False) -> dict:
    """Predict every external case with the locked model, then write the validation report (see module doc)."""
    ext, out = Path(external_dataset), Path(output)
    if recalibrate is not None and recalibrate not in RECALIBRATION_METHODS:
        raise ValueError(f"--recalibrate {recalibrate!r}: use one of {', '.join(RECALIBRATION_METHODS)}.")
    if not ext.is_dir():
        raise DatasetError(f"External dataset folder {ext} does not exist.")
    image_folder = _image_folder(ext, images)
    label_folder = next((ext / n for n in (image_folder.name.replace("images", "labels"), "labelsTs", "labelsTr")
                         if (ext / n).is_dir()), None)
    pred_out = out / PREDICTIONS_FOLDER
    target_zip = out / f"model_recalibrated_{recalibrate}.zip" if recalibrate else None
    if target_zip is not None and target_zip.exists() and not overwrite:
        raise FileExistsError(f"{target_zip} exists from an earlier run: pass --overwrite to replace it, or choose "
                              "another output folder (-o).")
    ext_json = load_json(ext / "dataset.json") if (ext / "dataset.json").is_file() else {}
    ref_labels = ext_json.get("labels") if isinstance(ext_json.get("labels"), dict) else None
    parent_hash = model_hash(model)
    with opened_package(model) as ctx:  # a zip is extracted into a temporary folder, removed afterwards
        layout = ResultLayout(ctx.dataset_name, (ctx.manifest or {}).get("plans_name") or PLANS_NAME)
        pp = layout.preprocessed
        dataset_json = load_dataset_json(pp / "dataset.json")
        target = (dataset_json.get("neonet") or {}).get("target", DEFAULT_TARGET)
        image_channel = int((dataset_json.get("neonet") or {}).get("image_channel", 0))
        roles = resolve_label_roles(dataset_json, ctx.dataset_name)
        labels, groups = read_external_labels(ext / CASE_LABELS_FILE, target)
        scan = scan_inputs(image_folder, dataset_json["file_ending"], len(dataset_json["channel_names"]),
                           work_folder=pred_out / ".work" / "dicom")
        case_ids = match_cases(labels, [c.case_id for c in scan.cases], ext / CASE_LABELS_FILE, image_folder)
        logger.info("External cohort %s: %d case(s) (%d positive) from %s", ext, len(case_ids), sum(labels.values()),
                    image_folder)
        res = predict(image_folder, pred_out, ctx.dataset_name, seg_model=ctx.seg_model, cls_run=ctx.cls_run,
                      folds=ctx.folds, device=device)
        records = {c: load_record(pred_out, c) or {"status": "failed", "error": "no record written"}
                   for c in case_ids}
        cohort = cohort_table(case_ids, labels, records, groups)
        analysis = analyse(cohort, n_boot=n_boot, seed=seed)
        fps, dice = _case_features(records, pred_out, roles, image_channel, label_folder,
                                   dataset_json["file_ending"], ref_labels)
        if ref_labels is not None and dice and not any(dice.values()):
            logger.warning("The external dataset.json names none of the model's labels %s (it has %s): no Dice.",
                           sorted(roles.labels), sorted(ref_labels))
        fingerprint = load_json(pp / "dataset_fingerprint.json") if (pp / "dataset_fingerprint.json").is_file() \
            else None
        tlcr_cases = read_training_tlcr(pp / "neonet_tlcr" / "gt" / "metadata.json")
        reference = training_reference(fingerprint, tlcr_cases, (ctx.manifest or {}).get("training_data"),
                                       image_channel)
        shift = shift_analysis(reference, fps) if fps else None
        seg = segmentation_analysis(cohort, dice, roles.tumor_names[0]) if dice else None
        apparent = None
        if recalibrate is not None:
            inc = [r for r in cohort["rows"] if r["status"] == "included"]
            update = fit_recalibration([r["label"] for r in inc], [r["probability"] for r in inc], recalibrate)
            folds = sorted({int(f) for r in inc for f in (records[r["case_id"]].get("fold_probabilities") or {})})
            checkpoints = {f: layout.stage_root(ctx.cls_run) / f"fold_{f}" / FINAL_CHECKPOINT for f in folds}
            written = write_recalibrated_model(
                ctx.root, checkpoints, update, target_zip,
                {"parent_model": str(model), "parent_model_sha256": parent_hash, "method": recalibrate,
                 "cohort": {"folder": str(ext.resolve()), "images": image_folder.name, "n": len(inc),
                            "n_pos": int(sum(r["label"] for r in inc)), "case_ids": [r["case_id"] for r in inc]},
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "toolkit_version": __version__},
                overwrite=overwrite)
            apparent = {"update": update, "model_zip": str(target_zip), "parent_model_sha256": parent_hash,
                        "apparent": recalibrated_analysis(cohort, records, update), "provenance": written}
            logger.info("Recalibrated model version (%s) written to %s", recalibrate, target_zip)
        meta = {"model": str(model), "model_sha256": parent_hash, "dataset": ctx.dataset_name,
                "cls_run": ctx.cls_run, "cohort": str(ext), "images": image_folder.name, "target": target,
                "version": __version__, "predictions": str(pred_out), "failed_cases": res.get("failed", []),
                "subgroup_min_cases": SUBGROUP_MIN_CASES, "subgroup_min_per_class": SUBGROUP_MIN_PER_CLASS}
        report = write_report(out, cohort, analysis, shift, seg, meta, apparent)
    logger.info("Validation report: %s", out / "validation_report.md")
    return {"report": report, "cohort": cohort, "output": out, "cases_folder": pred_out / CASES_FOLDER}
