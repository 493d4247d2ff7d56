"""Stratified patient-level folds, stored as nnU-Net's ``splits_final.json``.

nnU-Net and every NeoNet stage read the same file, so NeoSeg, NeoGen and NeoCls of fold *k*
all train on exactly the same cases and never see fold *k*'s validation cases.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"


def make_stratified_splits(case_labels: dict[str, int], n_folds: int = 5, seed: int = 12345) -> list[dict]:
    """Stratified k-fold on sorted case ids. Each case is in exactly one validation set."""
    from sklearn.model_selection import StratifiedKFold

    ids = np.array(sorted(case_labels))
    y = np.array([case_labels[i] for i in ids])
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_folds:
        raise DatasetError(
            f"Only {counts.min()} case(s) of class {int(np.argmin(counts))} for {n_folds} folds: every validation "
            f"fold would not contain both classes. Add cases or use fewer folds (n_folds <= {max(counts.min(), 1)})."
        )
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    splits = []
    for tr, va in skf.split(ids, y):
        splits.append({"train": sorted(ids[tr].tolist()), "val": sorted(ids[va].tolist())})
    check_splits(splits, case_labels)
    return splits


def check_splits(splits: list[dict], case_labels: dict[str, int]) -> None:
    """Validate splits against the case labels: disjoint, complete, two classes per fold part."""
    problems = []
    all_val: list[str] = []
    known = set(case_labels)
    for k, s in enumerate(splits):
        tr, va = set(s.get("train", [])), set(s.get("val", []))
        if tr & va:
            problems.append(f"fold {k}: case(s) {sorted(tr & va)[:5]} are in both train and val.")
        unknown = (tr | va) - known
        if unknown:
            problems.append(f"fold {k}: case(s) {sorted(unknown)[:5]} are not training cases of this dataset.")
        missing = known - tr - va
        if missing:
            problems.append(f"fold {k}: case(s) {sorted(missing)[:5]} are in neither train nor val.")
        for part, ids in (("train", tr), ("val", va)):
            classes = {case_labels[i] for i in ids if i in case_labels}
            if len(classes) < 2:
                problems.append(
                    f"fold {k} {part} has only class {sorted(classes)} of the target: AUC is undefined there. "
                    "Use stratified splits (delete splits_final.json and re-plan with --overwrite_splits)."
                )
        all_val += list(va)
    if len(all_val) != len(set(all_val)):
        problems.append("validation sets overlap between folds.")
    if set(all_val) != known:
        problems.append(f"{len(known - set(all_val))} case(s) are in no validation set.")
    if problems:
        raise DatasetError(["splits_final.json: " + p for p in problems])


def extend_splits(old: list[dict], case_labels: dict[str, int], seed: int = 12345) -> list[dict]:
    """Keep every existing case in its validation fold; drop cases that are gone; add new cases stratified
    (each new case of a class goes to the fold with the fewest validation cases of that class, in a seeded
    order). Logs what moved: nothing that was already assigned does."""
    n = len(old)
    fold_of = {c: k for k, sp in enumerate(old) for c in sp.get("val", []) if c in case_labels}
    removed = sorted({c for sp in old for c in sp.get("val", [])} - set(case_labels))
    new = sorted(set(case_labels) - set(fold_of))
    rng = np.random.default_rng(seed)
    for c in [new[i] for i in rng.permutation(len(new))]:
        y = case_labels[c]
        counts = [sum(1 for d, k in fold_of.items() if k == f and case_labels[d] == y) for f in range(n)]
        sizes = [sum(1 for k in fold_of.values() if k == f) for f in range(n)]
        fold_of[c] = min(range(n), key=lambda f: (counts[f], sizes[f], f))
    splits = []
    for k in range(n):
        val = sorted(c for c, f in fold_of.items() if f == k)
        splits.append({"train": sorted(c for c, f in fold_of.items() if f != k), "val": val})
    check_splits(splits, case_labels)
    logger.warning("splits_final.json: kept %d case(s) in their folds, added %d new case(s) %s, removed %d %s; "
                   "retrain the folds whose training set changed.", len(fold_of) - len(new), len(new), new[:10],
                   len(removed), removed[:10])
    return splits


def write_or_reuse_splits(preprocessed_folder: Path, case_labels: dict[str, int], n_folds: int = 5,
                          seed: int = 12345, overwrite: bool = False, raw_folder: Path | None = None) -> list[dict]:
    """Create ``splits_final.json`` once; afterwards reuse it (never silently replace it).

    * an existing file that is valid for the current cases is kept, even if a different seed
      would now give other folds (trained models depend on it);
    * an existing file that no longer fits the cases raises, naming ``--overwrite_splits``;
    * ``overwrite=True`` backs the old file up as ``splits_final.json.bak`` before writing; with the same
      number of folds it keeps every existing case in its fold and adds new cases stratified
      (:func:`extend_splits`), and only makes new folds when that is impossible (and says so);
    * a ``splits_final.json`` in the raw dataset folder (nnU-Net's convention for custom
      splits) is used as the source when no preprocessed one exists.
    """
    target = Path(preprocessed_folder) / SPLITS_FILE
    if target.is_file() and not overwrite:
        splits = load_json(target)
        try:
            check_splits(splits, case_labels)
        except DatasetError as e:
            raise DatasetError(
                f"Existing {target} does not fit the current dataset ({e}). Run neonet_plan_and_preprocess "
                "with --overwrite_splits to replace it (the old file is kept as splits_final.json.bak); models "
                "trained on the old folds must then be retrained."
            ) from None
        logger.info("Reusing existing %s (%d folds)", target, len(splits))
        return splits
    old = load_json(target) if target.is_file() else None
    if target.is_file() and overwrite:
        backup = target.with_name(SPLITS_FILE + ".bak")
        target.replace(backup)
        logger.warning("Replaced %s; the old splits are in %s", target, backup)
        if isinstance(old, list) and len(old) == n_folds:
            try:
                splits = extend_splits(old, case_labels, seed)
                save_json(splits, target)
                return splits
            except DatasetError as e:
                logger.warning("Could not keep the existing fold assignments (%s); making new stratified folds: "
                               "every case may move, retrain all folds.", e)
    raw_splits = Path(raw_folder) / SPLITS_FILE if raw_folder is not None else None
    if raw_splits is not None and raw_splits.is_file():
        splits = load_json(raw_splits)
        check_splits(splits, case_labels)
        logger.info("Using custom splits from %s", raw_splits)
    else:
        splits = make_stratified_splits(case_labels, n_folds, seed)
    save_json(splits, target)
    return splits


def load_splits(preprocessed_folder: Path) -> list[dict]:
    f = Path(preprocessed_folder) / SPLITS_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: run `neonet_plan_and_preprocess -d {f.parent.name}` first.")
    return load_json(f)


def get_fold(splits: list[dict], fold: int) -> dict:
    if not 0 <= int(fold) < len(splits):
        raise ValueError(f"Fold {fold} does not exist: splits_final.json has folds 0..{len(splits) - 1}.")
    return splits[int(fold)]
