"""``neonet_evaluate DATASET cls``: honest evaluation of NeoCls runs on real validation cases only.

For every run found in ``neonet_results/<ds>/cls_*__<plans>/fold_N/`` (see training/cls.py):

* per-fold AUC and their mean ± SD (what the paper reports as "Mean AUC");
* pooled out-of-fold AUC over all folds' validation cases with a DeLong 95 % CI and a stratified
  bootstrap 95 % CI (a single fold of ~26 cases has an AUC SD of ~0.10);
* sensitivity / specificity (Wilson CIs) at each fold's threshold, chosen on that fold's
  training data only, pooled over folds;
* calibration of the prevalence-recalibrated probabilities (reliability curve, ECE, Brier),
  and of the raw ones for comparison;
* ROC and reliability PNGs; paired DeLong tests between runs on the same cases (automatic:
  R vs R+S per architecture, PattenNet vs each baseline per ratio; or ``--compare A B``);
* Table 2 (architectures × ratios) and Table 5 (PattenNet ablations) as Markdown + CSV, with the
  early-stopping mode stated (``val`` = selected on the validation fold = optimistic);
* the shortcut check (real-vs-synthetic discriminator AUC per fold's training set) beside them.

Outputs go to ``neonet_results/<ds>/cls_evaluation__<plans>/``. One job per function: :func:`collect_runs`
(finished folds), :func:`pool_runs` (per-fold and pooled OOF metrics, :mod:`.cls_metrics`), :func:`paired_tests`
(DeLong + Holm), then plots, tables and the report text (:mod:`.cls_report`).
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from tqdm import tqdm

from neonet_toolkit.evaluation.cls_metrics import (
    auto_comparisons,
    discover_runs,
    evaluate_run,
    load_run,
    paired_test,
    repeat_summary,
    split_by_repeat,
)
from neonet_toolkit.evaluation.cls_report import (
    methods_summary,
    plot_calibration,
    plot_roc,
    report_markdown,
    write_csv,
    write_tables,
)
from neonet_toolkit.evaluation.cls_shortcut import classifier_shortcut_check, load_shortcut_checks
from neonet_toolkit.experiment_planning.splits import split_layout
from neonet_toolkit.preprocessing.synthetic_sets import MANIFEST, synthetic_folder
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import PLANS_NAME, dataset_folders, parse_cls_run_name
from neonet_toolkit.utilities.io import save_json, save_text

logger = logging.getLogger(__name__)

EVAL_DIR = "cls_evaluation"


# ----------------------------------------------------------------------------- main API
def evaluate_cls(dataset, runs: list[str] | None = None, compare: list[tuple[str, str]] | None = None,
                 n_boot: int = 2000, seed: int = 0, table5_ratio: float | None = None,
                 plans_name: str = PLANS_NAME, output: Path | None = None) -> dict:
    """Evaluate every finished NeoCls run (or ``runs``) of ``dataset``; writes plots, tables, ``report.md``,
    ``methods.md`` and ``summary.json`` to ``output`` (default ``cls_evaluation__<plans>``) and returns the summary."""
    name, pp, res_root = dataset_folders(dataset)
    n_folds, n_repeats = split_layout(pp)  # K folds per repeat; repeat 0 gives the main numbers
    found = collect_runs(dataset, res_root, plans_name, runs)
    out = Path(output) if output else res_root / f"{EVAL_DIR}__{plans_name}"
    out.mkdir(parents=True, exist_ok=True)
    results = pool_runs(found, n_folds, n_repeats, n_boot=n_boot, seed=seed)
    plot_runs(results, out)
    tests = paired_tests(results, compare)
    write_csv(out / "paired_tests.csv", tests)
    shortcuts = load_shortcut_checks(res_root, plans_name)
    _, table_section = write_tables(results, out, table5_ratio)
    clf_checks = classifier_shortcut_checks(name, found, plans_name)
    save_text(report_markdown(name, n_folds, n_repeats, results, table_section, tests, shortcuts, clf_checks),
              out / "report.md")
    save_text(methods_summary(name, pp, results, tests, shortcuts, n_boot), out / "methods.md")
    summary = {"dataset": name, "n_folds": n_folds, "n_repeats": n_repeats,
               "runs": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()},
               "paired_tests": tests, "shortcut_checks": shortcuts, "classifier_shortcut_checks": clf_checks,
               "output": str(out)}
    save_json(summary, out / "summary.json")
    logger.info("NeoCls evaluation of %d run(s) written to %s", len(results), out)
    return summary


def collect_runs(dataset, res_root: Path, plans_name: str, runs: list[str] | None = None
                 ) -> dict[str, dict[int, Path]]:
    """{run: {fold: folder}} of the finished NeoCls folds (only ``runs`` if given); none, or a named run
    missing, is an error naming the results folder."""
    found = discover_runs(res_root, plans_name)
    if runs:
        missing = [r for r in runs if r not in found]
        if missing:
            raise FileNotFoundError(f"No finished NeoCls fold for run(s) {missing} in {res_root}; found: {sorted(found)}")
        found = {r: found[r] for r in runs}
    if not found:
        raise FileNotFoundError(f"No finished NeoCls runs (cls_*__{plans_name}/fold_N/oof_predictions.csv) in "
                                f"{res_root}: train with `neonet_train {dataset} cls FOLD` or `neonet_experiment`.")
    return found


def pool_runs(found: dict[str, dict[int, Path]], n_folds: int, n_repeats: int, n_boot: int = 2000,
              seed: int = 0) -> dict[str, dict]:
    """Per run: per-fold and pooled out-of-fold metrics of repeat 0, plus the spread over repeats if any."""
    results = {}
    for rn in tqdm(sorted(found), desc="cls runs", disable=None):
        by_repeat = split_by_repeat(load_run(found[rn]), n_folds)
        if 0 not in by_repeat:
            logger.warning("%s: no finished fold of repeat 0 (folds 0..%d); its later repeats are not reported "
                           "alone.", rn, n_folds - 1)
            continue
        results[rn] = evaluate_run(rn, by_repeat[0], n_folds, n_boot=n_boot, seed=seed)
        if n_repeats > 1 or len(by_repeat) > 1:
            results[rn]["repeats"] = repeat_summary(rn, by_repeat, n_folds, n_boot=min(n_boot, 500), seed=seed)
    return results


def plot_runs(results: dict[str, dict], out: Path) -> None:
    """``roc_<run>.png`` and ``calibration_<run>.png`` per run."""
    for rn, r in results.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", rn)
        plot_roc([r], out / f"roc_{safe}.png", f"ROC {rn} (pooled OOF)")
        plot_calibration(r, out / f"calibration_{safe}.png")


def paired_tests(results: dict[str, dict], compare: list[tuple[str, str]] | None = None) -> list[dict]:
    """Paired DeLong tests (``compare``, else :func:`auto_comparisons`), Holm-adjusted over all of them."""
    pairs = list(compare) if compare else auto_comparisons(results)
    tests = []
    for a, b in pairs:
        if a not in results or b not in results:
            raise ValueError(f"--compare: run {a if a not in results else b!r} not found; found {sorted(results)}.")
        tests.append(paired_test(results[a], results[b]))
    for t, p_holm in zip(tests, stats.holm_adjust([t["p_value"] for t in tests])):
        t["p_holm"] = p_holm
    return tests


def classifier_shortcut_checks(name: str, found: dict[str, dict[int, Path]], plans_name: str) -> list[dict]:
    """:func:`classifier_shortcut_check` for every (run, fold) whose fold has a synthetic set."""
    out = []
    for run, folds in sorted(found.items()):
        if run.startswith("cls_radiomics"):
            continue
        rid = parse_cls_run_name(run)
        source = rid.crop_source if rid is not None else "gt"
        for k in sorted(folds):
            if (synthetic_folder(name, k, plans_name, source) / MANIFEST).is_file():
                try:
                    out.append(classifier_shortcut_check(name, run, k, plans_name))
                except (FileNotFoundError, ValueError, KeyError) as e:
                    logger.warning("classifier shortcut check %s fold %d skipped: %s", run, k, e)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cls")
    g.add_argument("--runs", nargs="+", default=None, help="run names (default: every finished cls_* run)")
    g.add_argument("--compare", nargs=2, action="append", metavar=("RUN_A", "RUN_B"), default=None,
                   help="paired DeLong test between two runs (repeatable); default: R vs R+S and PattenNet vs baselines")
    g.add_argument("--n-boot", dest="n_boot", type=int, default=2000, help="bootstrap replicates")
    g.add_argument("--table5-ratio", dest="table5_ratio", type=float, default=None)
    g.add_argument("--output", default=None, help="output folder (default neonet_results/<ds>/cls_evaluation__<plans>)")


def evaluate_from_args(args) -> dict:
    return evaluate_cls(args.dataset, runs=args.runs, compare=[tuple(c) for c in args.compare] if args.compare else None,
                        n_boot=args.n_boot, table5_ratio=args.table5_ratio,
                        output=Path(args.output) if args.output else None)
