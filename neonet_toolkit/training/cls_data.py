"""NeoCls training data: one fold's real and synthetic patches (:func:`load_fold_data`), training-set arms
and step budgets, flips, frozen-encoder latents, and the epoch-selection rule of the nested protocol."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from neonet_toolkit.models.cls import load_real, load_synthetic
from neonet_toolkit.models.cls_results import case_labels
from neonet_toolkit.preprocessing.synthetic_sets import (
    MANIFEST,
    load_manifest,
    manifest_crop_source,
    select_for_ratio,
    synthetic_folder,
)
from neonet_toolkit.utilities.devices import autocast
from neonet_toolkit.utilities.identifiers import (
    ARMS,
    AUTO_RATIO,
    PLANS_NAME,
    is_auto_ratio,
)


def check_ratio(ratio: float) -> float:
    r = float(ratio)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"--synthetic-ratio must be in [0, 1] (paper: 0, 0.25, 0.5, 0.75, 1.0), got {ratio}.")
    return r


def parse_ratio(value) -> float | str:
    """A synthetic ratio as given on the command line or to the API: a float in [0, 1] or ``"auto"``
    (chosen on the inner folds of the nested protocol among the plans' ``cls.ratio_candidates``)."""
    if is_auto_ratio(value):
        return AUTO_RATIO
    try:
        return check_ratio(value)
    except (TypeError, ValueError) as e:
        if isinstance(e, ValueError) and "must be in" in str(e):
            raise
        raise ValueError(f"--synthetic-ratio must be a number in [0, 1] or 'auto', got {value!r}.") from None


# ----------------------------------------------------------------------------- data
def select_synthetic(dataset, fold: int, ratio: float, train_ids: list[str], val_ids: list[str],
                     plans_name: str = PLANS_NAME, both_classes: bool = False,
                     crop_source: str = "gt") -> tuple[list[dict], Path]:
    """Manifest entries for ``ratio``, checked: every ``source_case`` is a training case of this fold, and the
    set was conditioned on the same mask source (``crop_source``) as the run's real patches."""

    folder = synthetic_folder(dataset, fold, plans_name, crop_source)
    manifest = load_manifest(folder)
    if manifest_crop_source(manifest) != crop_source:
        raise ValueError(f"{folder}/manifest.json was conditioned on {manifest_crop_source(manifest)} masks, but this "
                         f"run's real patches use {crop_source} masks. Regenerate: `neonet_generate -d {dataset} -f "
                         f"{fold} --crop-source {crop_source} --overwrite`.")
    if "fold" in manifest and int(manifest["fold"]) != int(fold):
        raise ValueError(f"{folder}/manifest.json belongs to fold {manifest['fold']}, not fold {fold}.")
    need = int(round(float(ratio) * int(manifest["gap"])))
    try:
        entries = select_for_ratio(manifest, ratio, n_majority=need if both_classes else 0)
    except ValueError as e:
        raise ValueError(f"fold {fold}: {e} For the both-classes arm generate majority patches too: "
                         f"`neonet_generate -d {dataset} -f {fold} --ratio {ratio:g} --n-majority -1"
                         f"{' --crop-source pred' if crop_source == 'pred' else ''}`.") from None
    train, val = set(train_ids), set(val_ids)
    leaked = sorted({e["id"] for e in entries if e.get("source_case") in val})
    if leaked:
        raise ValueError(f"Synthetic patch(es) {leaked[:5]} were generated from validation case(s) of fold {fold}: "
                         "they would leak the validation set into training. Regenerate the fold's synthetic set.")
    foreign = sorted({e["id"] for e in entries if e.get("source_case") not in train})
    if foreign:
        raise ValueError(f"Synthetic patch(es) {foreign[:5]} do not name a training case of fold {fold} as "
                         "source_case; cannot prove they are leak-free.")
    return entries, folder / "patches"


def inner_split(ids: list[str], labels: dict[str, int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Stratified (train, inner-val) split of a training fold, at least one case of each class held out."""
    y = [labels[i] for i in ids]
    n_val = max(2, int(round(fraction * len(ids))))
    if min(np.bincount(y, minlength=2)) < 2:
        raise ValueError("Inner early-stopping split needs >= 2 cases of each class in the training fold.")
    tr, va = train_test_split(sorted(ids), test_size=n_val, stratify=[labels[i] for i in sorted(ids)],
                              random_state=seed)
    return sorted(tr), sorted(va)


FLIP_VARIANTS = tuple(tuple(d + 1 for d in range(3) if (v >> d) & 1) for v in range(8))  # per-sample flip dims


def draw_flip_variants(n: int, rng: np.random.Generator) -> list[int]:
    """Per sample, a random subset of the 3 spatial axes (each with p=0.5) as an index into FLIP_VARIANTS."""
    return [sum(1 << d for d in range(3) if rng.random() < 0.5) for _ in range(n)]


def augment_batch(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips along each spatial axis, per sample."""
    out = []
    for xi, v in zip(x, draw_flip_variants(x.shape[0], rng)):
        out.append(torch.flip(xi, FLIP_VARIANTS[v]) if v else xi)
    return torch.stack(out)


@torch.no_grad()
def encode_latents(model: torch.nn.Module, images: torch.Tensor, device: torch.device, variants=(0,),
                   batch_size: int = 8) -> torch.Tensor:
    """Frozen-encoder latents ``model.encode(flip(x))`` for each flip variant: (N, len(variants), C, d, h, w).

    Valid as a training cache only because the encoder is frozen (no gradient, eval mode, fixed weights)."""
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.as_tensor(images[s:s + batch_size], dtype=torch.float32).to(device)
        zs = []
        for v in variants:
            xv = torch.flip(x, [d + 1 for d in FLIP_VARIANTS[v]]) if v else x  # batch dim first
            with autocast(device):
                zs.append(model.encode(xv).float())
        out.append(torch.stack(zs, 1).cpu())
    return torch.cat(out)


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """A PattenNet-like model whose ``encode`` part has no trainable parameter."""
    enc = getattr(model, "encoder", None)
    return (hasattr(model, "encode") and hasattr(model, "forward_latents") and enc is not None
            and not any(p.requires_grad for p in enc.parameters()))


# ----------------------------------------------------------------------------- training sets and step budgets
def epoch_order(n_items: int, budget: int, rng: np.random.Generator) -> list[int]:
    """``budget`` item indices for one epoch: whole permutations of ``range(n_items)``, the last one truncated.

    Every arm of one synthetic ratio draws the same ``budget`` per epoch, hence runs the same number of
    optimizer steps whatever the size of its own training set."""
    if n_items <= 0:
        return []
    out: list[int] = []
    while len(out) < budget:
        out.extend(int(i) for i in rng.permutation(n_items))
    return out[:budget]


def arm_training_set(real_labels: list[int], syn_labels: list[int], syn_sources: list[str], real_ids: list[str],
                     allowed: set[str], ratio: float, arm: str, seed: int) -> dict:
    """Which items (indices into ``real + synthetic``) one model trains on, their loss weights and the budget.

    ``allowed``: the real cases this model may see (a training fold, or an inner-training part of it);
    synthetic patches count only if generated from an allowed case. The class gap is measured on the
    allowed real cases; ``need = round(ratio * gap)`` is the number of minority patches the paper's arm adds.

    * ``synthetic``: real + the synthetic minority patches (the paper);
    * ``both``: real + synthetic patches of both classes (minority and majority), "synthetic" carries no label;
    * ``oversample``: real + ``need`` minority real cases drawn again (with replacement);
    * ``weighted``: real only, minority loss weight ``(n_min + need) / n_min`` (same effective balance).

    ``budget`` (items per epoch) is ``n_real + 2 * need`` for every arm of a ratio > 0 (the size of the
    largest arm, ``both``), ``n_real`` at ratio 0.
    """
    real_idx = [i for i, c in enumerate(real_ids) if c in allowed]
    y = np.array([real_labels[i] for i in real_idx], int)
    counts = np.bincount(y, minlength=2)
    minority = int(np.argmin(counts)) if counts[0] != counts[1] else 1
    need = int(round(float(ratio) * abs(int(counts[1]) - int(counts[0]))))
    n_real = len(real_labels)
    syn_ok = [n_real + k for k, src in enumerate(syn_sources) if src in allowed]
    weights = np.ones(n_real + len(syn_labels), np.float32)
    if arm == "synthetic":
        items = real_idx + [i for i in syn_ok if syn_labels[i - n_real] == minority]
    elif arm == "both":
        items = real_idx + syn_ok
    elif arm == "oversample":
        pool = [i for i in real_idx if real_labels[i] == minority]
        rng = np.random.default_rng(seed)
        items = real_idx + [int(i) for i in rng.choice(pool, size=need, replace=True)] if need and pool else real_idx
    elif arm == "weighted":
        items = list(real_idx)
        n_min = int(counts[minority])
        if n_min:
            weights[[i for i in real_idx if real_labels[i] == minority]] = (n_min + need) / n_min
    else:
        raise ValueError(f"Unknown arm {arm!r}; use one of {ARMS}.")
    budget = len(real_idx) + (2 * need if ratio > 0 else 0)
    labels = np.array([real_labels[i] if i < n_real else syn_labels[i - n_real] for i in items], float)
    w = weights[items] if items else np.zeros(0)
    prevalence = float((labels * w).sum() / w.sum()) if len(items) else float("nan")
    return {"items": items, "weights": weights, "budget": max(budget, len(real_idx)), "need": need,
            "minority": minority, "prevalence": prevalence}


def select_epoch(curve_auc: np.ndarray, curve_bce: np.ndarray, min_epochs: int = 0, window: int = 3) -> int:
    """The epoch with the best smoothed inner-CV AUC (centred moving average of ``window`` epochs), ties
    broken by the lower smoothed BCE; epochs before ``min_epochs`` are not eligible."""
    n = len(curve_auc)
    h = max(int(window), 1) // 2

    def smooth(v):
        v = np.asarray(v, float)
        return np.array([np.nanmean(v[max(0, e - h): e + h + 1]) for e in range(n)])

    auc, bce = smooth(curve_auc), smooth(curve_bce)
    first = min(max(int(min_epochs) - 1, 0), n - 1)
    best = first
    for e in range(first, n):
        if auc[e] > auc[best] + 1e-12 or (abs(auc[e] - auc[best]) <= 1e-12 and bce[e] < bce[best] - 1e-12):
            best = e
    return int(best)


# ----------------------------------------------------------------------------- one fold's data
@dataclass
class FoldData:
    """What one NeoCls fold trains and is evaluated on. Training items are ``real (fit_ids) + synthetic``."""

    labels: dict[str, int]
    fit_ids: list[str]
    inner_ids: list[str]
    synthetic_entries: list[dict]
    dropped_synthetic: int      # synthetic patches left out because derived from inner-validation cases
    x_train: torch.Tensor
    y_train: torch.Tensor
    real_labels: list[int]
    train_item_ids: list[str]
    x_val: np.ndarray
    y_val: np.ndarray
    x_inner: np.ndarray | None
    y_inner: np.ndarray | None
    real_prevalence: float
    synthetic_gap: int = 0      # the manifest's class gap (ratio r uses the first round(r * gap) entries per role)
    synthetic_rank: list[int] | None = None  # each entry's position in its role (minority / majority) by order

    def synthetic_mask(self, ratio: float) -> list[bool]:
        """Which loaded synthetic entries a ratio uses: those :func:`select_for_ratio` picks at ``ratio`` (a prefix,
        by ``order``, of what was loaded at a larger ratio)."""
        if self.synthetic_rank is None:
            return [True] * len(self.synthetic_entries)
        need = int(round(float(ratio) * int(self.synthetic_gap)))
        return [r < need for r in self.synthetic_rank]

    def synthetic_for_ratio(self, ratio: float) -> list[dict]:
        return [e for e, ok in zip(self.synthetic_entries, self.synthetic_mask(ratio)) if ok]

    def training_set(self, allowed: set[str], ratio: float, arm: str, seed: int) -> dict:
        """:func:`arm_training_set` over this fold's items, with the synthetic entries of ``ratio`` only (a ratio
        without synthetic patches in the synthetic arm counts as 0)."""
        use = self.synthetic_mask(ratio)
        syn_labels = [int(e["label"]) for e in self.synthetic_entries]
        # an entry of a larger ratio is no training item at this ratio: its source is never "allowed"
        sources = [e["source_case"] if ok else None for e, ok in zip(self.synthetic_entries, use)]
        return arm_training_set(self.real_labels, syn_labels, sources, self.fit_ids, allowed,
                                ratio if arm != "synthetic" or any(use) else 0.0, arm, seed)


def load_fold_data(dataset: str, preprocessed: Path, fold: int, train_ids: list[str], val_ids: list[str],
                   split_training: Callable[[dict[str, int]], tuple[list[str], list[str]]], ratio: float, arm: str,
                   crop_source: str, plans_name: str, crop, check_manifest: Callable[[Path], None]) -> FoldData:
    """Real patches of the fit / inner / validation cases and the fold's synthetic patches for ``ratio``.

    ``split_training(labels)``: (fit ids, inner-validation ids) from the selection protocol; synthetic patches
    derived from an inner-validation case are left out. ``check_manifest(manifest_file)`` runs before the synthetic patches load
    (the trainer's upstream check)."""
    labels = case_labels(preprocessed, crop_source)
    bad = sorted(set(train_ids) & set(val_ids))
    if bad:
        raise ValueError(f"splits_final.json fold {fold}: {bad[:5]} in both train and val.")
    fit_ids, inner_ids = split_training(labels)
    entries: list[dict] = []
    dropped, gap, rank = 0, 0, None
    if ratio > 0 and arm in ("synthetic", "both"):
        entries, syn_folder = select_synthetic(dataset, fold, ratio, train_ids, val_ids, plans_name,
                                               both_classes=arm == "both", crop_source=crop_source)
        gap = int(load_manifest(syn_folder.parent)["gap"])
        rank, seen = [], {}  # select_for_ratio returns each role in order: the position within its role
        for e in entries:
            rank.append(seen.get(e["role"], 0))
            seen[e["role"]] = rank[-1] + 1
        keep = [e["source_case"] not in set(inner_ids) for e in entries]
        dropped = keep.count(False)
        entries = [e for e, k in zip(entries, keep) if k]
        rank = [r for r, k in zip(rank, keep) if k]
        check_manifest(syn_folder.parent / MANIFEST)
        syn = load_synthetic(entries, syn_folder, crop)
    else:
        syn = np.zeros((0, 2, *crop), np.float32)
    real = load_real(preprocessed, crop_source, fit_ids)
    real_labels = [labels[c] for c in fit_ids]
    return FoldData(
        labels=labels, fit_ids=fit_ids, inner_ids=inner_ids, synthetic_entries=entries, dropped_synthetic=dropped,
        x_train=torch.from_numpy(np.concatenate([real, syn]) if len(syn) else real),
        y_train=torch.tensor(real_labels + [int(e["label"]) for e in entries], dtype=torch.float32),
        real_labels=real_labels,
        train_item_ids=list(fit_ids) + [f"synthetic:{e['id']}<-{e['source_case']}" for e in entries],
        x_val=load_real(preprocessed, crop_source, val_ids), y_val=np.array([labels[c] for c in val_ids]),
        x_inner=load_real(preprocessed, crop_source, inner_ids) if inner_ids else None,
        y_inner=np.array([labels[c] for c in inner_ids]) if inner_ids else None,
        real_prevalence=float(np.array([labels[c] for c in train_ids]).mean()),
        synthetic_gap=gap, synthetic_rank=rank)
