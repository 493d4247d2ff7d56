"""Stratified patient-level folds, stored as nnU-Net's ``splits_final.json``.

nnU-Net and every NeoNet stage read the same file, so NeoSeg, NeoGen and NeoCls of fold *k*
all train on exactly the same cases and never see fold *k*'s validation cases.

**Repeated cross-validation.** ``add_repeats`` appends further stratified K-fold partitions made with
new split seeds: repeat *r* is folds ``r*K .. r*K+K-1`` of the same ``splits_final.json`` (nnU-Net
trains any fold index of that file, and every NeoNet stage is per fold, so "every stage per repeat"
needs nothing else). Repeat 0 is always the original K folds, unchanged. ``neonet_repeats.json``
beside it records K and the seed of every repeat; without it the file is one repeat.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.io import load_json, move_aside, save_json

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
REPEATS_FILE = "neonet_repeats.json"


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


def check_splits(splits: list[dict], case_labels: dict[str, int], folds_per_repeat: int | None = None) -> None:
    """Validate splits against the case labels: disjoint, complete, two classes per fold part. With
    ``folds_per_repeat`` K, every block of K folds (one repeat) must be such a partition on its own."""
    k_rep = max(1, int(folds_per_repeat or len(splits)))
    if len(splits) % k_rep:
        raise DatasetError(f"splits_final.json: {len(splits)} folds is not a whole number of repeats of {k_rep} folds "
                           f"({REPEATS_FILE}). Re-plan with --overwrite_splits.")
    if k_rep < len(splits):
        for r in range(len(splits) // k_rep):
            try:
                check_splits(splits[r * k_rep:(r + 1) * k_rep], case_labels)
            except DatasetError as e:
                raise DatasetError([f"repeat {r} (folds {r * k_rep}..{(r + 1) * k_rep - 1}): {m}"
                                    for m in e.problems]) from None
        return
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
    k_rep = folds_per_repeat(preprocessed_folder)
    if target.is_file() and not overwrite:
        splits = load_json(target)
        try:
            check_splits(splits, case_labels, k_rep)
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
        k_old = k_rep or (len(old) if isinstance(old, list) else 0)
        if isinstance(old, list) and k_old == n_folds and len(old) % n_folds == 0:
            try:  # every repeat keeps its assignments; new cases join each repeat stratified
                splits = [sp for r in range(len(old) // n_folds)
                          for sp in extend_splits(old[r * n_folds:(r + 1) * n_folds], case_labels, seed + r)]
                save_json(splits, target)
                return splits
            except DatasetError as e:
                logger.warning("Could not keep the existing fold assignments (%s); making new stratified folds: "
                               "every case may move, retrain all folds.", e)
    if (Path(preprocessed_folder) / REPEATS_FILE).is_file():  # new folds: one repeat again
        move_aside(Path(preprocessed_folder) / REPEATS_FILE)
    raw_splits = Path(raw_folder) / SPLITS_FILE if raw_folder is not None else None
    if raw_splits is not None and raw_splits.is_file():
        splits = load_json(raw_splits)
        check_splits(splits, case_labels)
        logger.info("Using custom splits from %s", raw_splits)
    else:
        splits = make_stratified_splits(case_labels, n_folds, seed)
    save_json(splits, target)
    return splits


def folds_per_repeat(preprocessed_folder: Path) -> int | None:
    """K of a repeated cross-validation (``neonet_repeats.json``), or None for a plain K-fold file."""
    f = Path(preprocessed_folder) / REPEATS_FILE
    return int(load_json(f)["folds_per_repeat"]) if f.is_file() else None


def split_layout(preprocessed_folder: Path) -> tuple[int, int]:
    """(folds per repeat K, number of complete repeats R) of the dataset's ``splits_final.json``."""
    n = len(load_splits(preprocessed_folder))
    k = folds_per_repeat(preprocessed_folder) or n
    if n % k:
        raise DatasetError(f"{Path(preprocessed_folder) / SPLITS_FILE} has {n} folds, not a whole number of repeats "
                           f"of {k} ({REPEATS_FILE}); re-plan with --overwrite_splits.")
    return k, n // k


def repeat_folds(preprocessed_folder: Path, repeats: int | None = None) -> list[int]:
    """Fold indices of repeats ``0 .. repeats-1`` (default: all repeats in the file)."""
    k, r = split_layout(preprocessed_folder)
    r = r if repeats is None else int(repeats)
    return list(range(k * r))


def add_repeats(preprocessed_folder: Path, case_labels: dict[str, int], repeats: int, seed: int = 12345) -> list[dict]:
    """Make ``splits_final.json`` hold ``repeats`` stratified K-fold partitions (repeated CV).

    Existing folds never change (trained models depend on them); repeat *r* is made with split seed
    ``seed + r`` and appended. Returns the splits. Asking for fewer repeats than exist changes nothing."""
    pp = Path(preprocessed_folder)
    splits = load_splits(pp)
    k, have = split_layout(pp)
    if int(repeats) < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}.")
    if int(repeats) <= have:
        logger.info("%s already holds %d repeat(s) of %d folds", pp / SPLITS_FILE, have, k)
        return splits
    check_splits(splits, case_labels, k)
    meta = load_json(pp / REPEATS_FILE) if (pp / REPEATS_FILE).is_file() else {"folds_per_repeat": k,
                                                                                 "repeat_seeds": {"0": None}}
    new = list(splits)
    for r in range(have, int(repeats)):
        new += make_stratified_splits(case_labels, k, seed + r)
        meta["repeat_seeds"][str(r)] = seed + r
    check_splits(new, case_labels, k)
    # the layout file first: with it and the old splits, the old repeats still read correctly
    save_json(meta, pp / REPEATS_FILE)
    save_json(new, pp / SPLITS_FILE)
    logger.info("%s: %d repeat(s) of %d stratified folds (folds %d..%d added, seeds %s)", pp / SPLITS_FILE,
                int(repeats), k, len(splits), len(new) - 1, [seed + r for r in range(have, int(repeats))])
    return new


def load_splits(preprocessed_folder: Path) -> list[dict]:
    f = Path(preprocessed_folder) / SPLITS_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: run `neonet_plan_and_preprocess -d {f.parent.name}` first.")
    return load_json(f)


def get_fold(splits: list[dict], fold: int) -> dict:
    if not 0 <= int(fold) < len(splits):
        raise ValueError(f"Fold {fold} does not exist: splits_final.json has folds 0..{len(splits) - 1}.")
    return splits[int(fold)]
