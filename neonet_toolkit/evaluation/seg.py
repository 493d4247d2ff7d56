"""``neonet_evaluate DATASET seg``: per-fold and mean Dice per label for every trained NeoSeg model.

Reads nnU-Net's own ``fold_N/validation/summary.json`` (written by ``nnUNetv2_train`` and by
``neonet_train ... seg``) of every model folder ``nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<config>``,
and, with nnU-Net's ``accumulate_cv_results``, writes the pooled out-of-fold ``summary.json`` of each
model (``<model>/crossval_results_folds_<folds>/summary.json``). Output, in the shape of the paper's
Table 1, in ``neonet_results/DatasetXXX/evaluation/seg/``:

* ``seg_dice_per_fold.csv``: model, fold, Dice per label, mean foreground Dice;
* ``seg_dice.csv`` / ``seg_dice.md``: per model the mean (± SD over folds) Dice per label and the
  mean Dice (mean over liver and tumour, as in Table 1), plus the pooled out-of-fold Dice.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from neonet_toolkit.utilities.identifiers import NNUNET_VALIDATION_SUMMARY, ResultLayout
from neonet_toolkit.utilities.io import load_json, save_csv, save_json, save_text

logger = logging.getLogger(__name__)

PAPER_TABLE1 = {"unet": 0.9453, "segresnet": 0.9416, "dynunet": 0.9482, "swinunetr": 0.9516}
ARCH_OF_TRAINER = {"NeoSegTrainer": "swinunetr", "NeoSegTrainer_UNet": "unet", "NeoSegTrainer_SegResNet": "segresnet",
                   "NeoSegTrainer_DynUNet": "dynunet", "NeoSegTrainer_nnUNet": "nnunet"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("seg")
    g.add_argument("--folds", type=int, nargs="+", default=None, help="folds to include (default: all trained)")
    g.add_argument("--models", nargs="+", default=None,
                   help="model folder names or paths (default: every model folder of the dataset)")
    g.add_argument("--no-pooled", dest="pooled", action="store_false",
                   help="skip nnU-Net's pooled cross-validation summary.json")


def _model_folders(layout: ResultLayout, models=None) -> list[Path]:
    results = layout.nnunet_results
    if models:
        out = []
        for m in models:
            p = Path(m)
            p = p if p.is_dir() else results / m
            if not p.is_dir():
                raise FileNotFoundError(f"Model folder {m} not found (looked in {results}).")
            out.append(p)
        return out
    return layout.nnunet_model_folders()


def _fmt(mean, sd):
    return "n/a" if mean is None or np.isnan(mean) else (f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f}")


def evaluate_seg(dataset: int | str | ResultLayout, folds=None, models=None, pooled: bool = True,
                 output_folder: str | Path | None = None) -> dict:
    layout = ResultLayout.for_dataset(dataset)
    results = layout.nnunet_results
    out_dir = Path(output_folder) if output_folder else layout.seg_evaluation_folder
    per_fold_rows, summary_rows = [], []
    label_names: list[str] = []
    for mf in _model_folders(layout, models):
        if not (mf / "dataset.json").is_file():
            continue
        ds_json = load_json(mf / "dataset.json")
        id_to_name = {str(v): k for k, v in ds_json["labels"].items() if k != "background" and not isinstance(v, list)}
        for n in id_to_name.values():
            if n not in label_names:
                label_names.append(n)
        validated = ResultLayout.finished_folds(mf, "seg_validation")
        have = sorted(validated)
        use = [f for f in have if folds is None or f in folds]
        if folds is not None and set(folds) - set(have):
            logger.warning("%s: fold(s) %s have no validation/summary.json (not trained or not validated); skipped.",
                           mf.name, sorted(set(folds) - set(have)))
        if not use:
            continue
        model_id = ResultLayout.parse_nnunet_identifier(mf.name)
        trainer = model_id.trainer if model_id else mf.name
        model_rows = []
        for f in use:
            s = load_json(validated[f] / NNUNET_VALIDATION_SUMMARY)
            row = {"model": mf.name, "architecture": ARCH_OF_TRAINER.get(trainer, trainer), "fold": f,
                   "n_cases": len(s.get("metric_per_case", []))}
            for lid, m in s["mean"].items():
                row[f"dice_{id_to_name.get(lid, lid)}"] = float(m["Dice"])
            row["mean_dice"] = float(s["foreground_mean"]["Dice"])
            model_rows.append(row)
        per_fold_rows += model_rows
        srow = {"model": mf.name, "architecture": ARCH_OF_TRAINER.get(trainer, trainer), "folds": use}
        for key in [k for k in model_rows[0] if k.startswith("dice_")] + ["mean_dice"]:
            vals = np.array([r.get(key, np.nan) for r in model_rows], float)
            srow[key] = float(np.nanmean(vals))
            srow[key + "_sd"] = float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else None
        if pooled:
            from nnunetv2.evaluation.accumulate_cv_results import accumulate_cv_results

            merged = ResultLayout.nnunet_crossval_folder(mf, use)
            accumulate_cv_results(str(mf), str(merged), use, num_processes=1, overwrite=True)
            ps = load_json(merged / "summary.json")
            srow["pooled_summary"] = str(merged / "summary.json")
            srow["pooled_mean_dice"] = float(ps["foreground_mean"]["Dice"])
            for lid, m in ps["mean"].items():
                srow[f"pooled_dice_{id_to_name.get(lid, lid)}"] = float(m["Dice"])
        srow["paper_mean_dice"] = PAPER_TABLE1.get(srow["architecture"])
        summary_rows.append(srow)
    if not summary_rows:
        raise FileNotFoundError(
            f"No trained NeoSeg/nnU-Net model with validation results in {results}. Train one first, e.g. "
            f"`neonet_train {dataset} seg 0` (nnU-Net writes fold_N/validation/summary.json after training).")

    dice_cols = [f"dice_{n}" for n in label_names]
    out_dir.mkdir(parents=True, exist_ok=True)

    save_csv(per_fold_rows, out_dir / "seg_dice_per_fold.csv",
             ["model", "architecture", "fold", "n_cases"] + dice_cols + ["mean_dice"])
    scols = ["model", "architecture", "folds"]
    for c in dice_cols + ["mean_dice"]:
        scols += [c, c + "_sd"]
    scols += ["pooled_mean_dice"] + [f"pooled_{c}" for c in dice_cols] + ["paper_mean_dice"]
    save_csv(summary_rows, out_dir / "seg_dice.csv", scols)
    lines = ["| Model | Folds | " + " | ".join(f"{n} Dice" for n in label_names)
             + " | Mean Dice | Pooled OOF mean Dice | Paper (Table 1) |",
             "|" + "---|" * (len(label_names) + 5)]
    for r in sorted(summary_rows, key=lambda r: r["mean_dice"]):
        cells = [r["architecture"] + f" (`{r['model']}`)", ",".join(map(str, r["folds"]))]
        cells += [_fmt(r.get(c, np.nan), r.get(c + "_sd")) for c in dice_cols]
        cells += [_fmt(r["mean_dice"], r.get("mean_dice_sd")), _fmt(r.get("pooled_mean_dice", np.nan), None),
                  f"{r['paper_mean_dice']:.4f}" if r["paper_mean_dice"] else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    md = ("# NeoSeg segmentation (Table 1 shape)\n\nMean Dice = mean over the foreground labels "
          f"({', '.join(label_names)}) per fold, then mean ± SD over folds. Pooled OOF = nnU-Net's summary.json of "
          "all validation cases together.\n\n" + "\n".join(lines) + "\n")
    save_text(md, out_dir / "seg_dice.md")
    report = {"dataset": layout.dataset_name, "per_fold": per_fold_rows, "models": summary_rows,
              "output_folder": str(out_dir)}
    save_json(report, out_dir / "seg_dice.json")
    logger.info("NeoSeg evaluation of %d model(s) written to %s\n%s", len(summary_rows), out_dir, md)
    return report


def evaluate_from_args(args) -> dict:
    return evaluate_seg(args.dataset, folds=args.folds, models=args.models, pooled=args.pooled)
