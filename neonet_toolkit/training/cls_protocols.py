"""NeoCls model-selection protocols as strategy objects, one per ``--early-stopping`` mode.

Each protocol answers the questions the trainer asks, through one interface:

* which real training cases the model is fitted on, and which are held out (:meth:`split_training`);
* what runs before the final model trains (:meth:`prepare`: the nested inner CV);
* which data selects the epoch, per epoch (:attr:`monitor`: ``"val"``, ``"inner"`` or ``None``);
* where calibration and the decision threshold are fitted (:meth:`fit_threshold`);
* what the summary records about the selection (:meth:`summary_fields`).

``nested`` (the plans default): inner stratified k-fold of the training fold picks the epoch, fits the
calibration and the threshold, then a refit on the whole training fold. ``val``: the paper's protocol
(patience on the reported validation fold: optimistic). ``inner``: one stratified inner split. ``none``:
the last epoch. :func:`get_protocol` looks a protocol up by name (:data:`PROTOCOLS`).

Only ``nested`` can choose the synthetic ratio (``--synthetic-ratio auto``, :attr:`chooses_ratio`): one inner CV
per candidate ratio (:func:`choose_ratio`), the best pooled inner-OOF AUC wins, ties to the smaller ratio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import math

import numpy as np
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from neonet_toolkit.models.cls import predict_logits, sigmoid
from neonet_toolkit.models.cls_results import NESTED_FILE
from neonet_toolkit.training.cls_data import inner_split, select_epoch
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.devices import make_grad_scaler
from neonet_toolkit.utilities.identifiers import EARLY_STOPPING_MODES, PROTOCOL_LABELS
from neonet_toolkit.utilities.io import load_json, save_json



@dataclass
class ThresholdFit:
    """Where the threshold (and calibration) came from: the cases, their labels and probabilities."""

    ids: list[str]
    y: np.ndarray
    raw: np.ndarray          # sigmoid outputs before the prior correction
    probability: np.ndarray  # what the threshold was chosen on
    calibration: dict
    threshold: float
    source: str


class SelectionProtocol:
    """Base protocol: fit on the whole training fold, no per-epoch selection, threshold on the training cases."""

    name: ClassVar[str] = ""
    monitor: ClassVar[str | None] = None  # "val" / "inner": the held-out set whose AUC selects the epoch
    final_when_finished: ClassVar[bool] = False  # a finished fold is final whatever the epoch budget
    chooses_ratio: ClassVar[bool] = False  # can choose the synthetic ratio on inner folds (--synthetic-ratio auto)

    @property
    def label(self) -> str:
        return PROTOCOL_LABELS[self.name]

    @property
    def early_stops(self) -> bool:
        """Patience-based early stopping and a ``checkpoint_best.pth`` (only with a monitored set)."""
        return self.monitor is not None

    def split_training(self, train_ids: list[str], labels: dict[str, int], config: dict,
                       seed: int) -> tuple[list[str], list[str]]:
        """(fit ids, inner-validation ids) of the training fold."""
        return list(train_ids), []

    def prepare(self, trainer: Any) -> None:
        """Runs at the end of ``build()``, before the final model trains."""

    def selection_summary(self) -> dict:
        """The nested-selection record (empty for the protocols without one)."""
        return {}

    def threshold_data(self, trainer: Any) -> tuple[list[str], np.ndarray, np.ndarray, str]:
        """(ids, images, labels, source) the threshold is chosen on: the real training cases."""
        data = trainer.data
        real_n = len(data.fit_ids)
        return (data.fit_ids, data.x_train[:real_n].numpy(), data.y_train[:real_n].numpy().astype(int),
                "training_cases")

    def fit_threshold(self, trainer: Any, net: Any, recal: Callable[[np.ndarray], np.ndarray]) -> ThresholdFit:
        """Threshold on training data only, no calibration beyond the prior correction ``recal``."""
        ids, x, y, source = self.threshold_data(trainer)
        raw = sigmoid(predict_logits(net, x, trainer.device))
        p = recal(raw)
        threshold = (stats.select_threshold(y, p, trainer.config["threshold_method"])
                     if len(np.unique(y)) == 2 else float(trainer.data.real_prevalence))
        return ThresholdFit(ids, y, raw, p, {"method": "none"}, threshold, source)

    def selection_ids(self, trainer: Any) -> list[str]:
        return sorted(trainer.data.inner_ids)

    def summary_fields(self, trainer: Any, fit: ThresholdFit) -> dict:
        """What ``cls_summary.json`` records about the selection."""
        return {"nested_inner_folds": [], "selection_rule": self.name, "selection_ids": self.selection_ids(trainer),
                "calibration_ids": []}


class NoSelection(SelectionProtocol):
    """``none``: fixed epochs, the last one is kept."""

    name = "none"


class ValidationFoldSelection(SelectionProtocol):
    """``val``: the paper's protocol; patience on the reported validation fold (its AUC is optimistic)."""

    name = "val"
    monitor = "val"

    def selection_ids(self, trainer: Any) -> list[str]:
        return sorted(trainer.val_ids)


class InnerSplitSelection(SelectionProtocol):
    """``inner``: one stratified inner split of the training fold selects the epoch and the threshold."""

    name = "inner"
    monitor = "inner"

    def split_training(self, train_ids: list[str], labels: dict[str, int], config: dict,
                       seed: int) -> tuple[list[str], list[str]]:
        return inner_split(train_ids, labels, float(config["inner_val_fraction"]), seed)

    def threshold_data(self, trainer: Any) -> tuple[list[str], np.ndarray, np.ndarray, str]:
        data = trainer.data
        return data.inner_ids, data.x_inner, data.y_inner, "inner_split"


class NestedSelection(SelectionProtocol):
    """``nested``: an inner stratified k-fold of the training fold picks the epoch and fits calibration and
    threshold on the pooled inner out-of-fold predictions; the final model is refitted on the whole training
    fold for the selected number of epochs."""

    name = "nested"
    final_when_finished = True
    chooses_ratio = True

    def __init__(self) -> None:
        self.record: dict | None = None

    def prepare(self, trainer: Any) -> None:
        record = trainer.output_folder / NESTED_FILE
        if trainer.continue_training and record.is_file():
            self.record = load_json(record)
            trainer.log("nested selection reused from %s: epoch %d", record, self.record["selected_epoch"])
        else:
            auto = getattr(trainer, "auto_ratio", False)
            self.record = choose_ratio(trainer) if auto else run_inner_cv(trainer)
            if trainer.dist.is_main:
                save_json(self.record, record)
        if "ratio_search" in self.record:  # auto: the refit trains at the chosen ratio
            search = self.record["ratio_search"]
            trainer.ratio_candidates = [float(c["ratio"]) for c in search["candidates"]]
            trainer.ratio_choice = {k: search[k] for k in ("chosen", "candidates", "rule")}
            trainer.use_ratio(float(search["chosen"]))
        trainer.num_epochs = int(self.record["selected_epoch"]) + 1  # the refit on the whole training fold

    def selection_summary(self) -> dict:
        return self.record or {}

    def fit_threshold(self, trainer: Any, net: Any, recal: Callable[[np.ndarray], np.ndarray]) -> ThresholdFit:
        rows = self.record["inner_oof"]
        return ThresholdFit([r["case_id"] for r in rows], np.array([r["label"] for r in rows]),
                            np.array([r["probability_prior"] for r in rows]),
                            np.array([r["probability"] for r in rows]), dict(self.record["calibration"]),
                            float(self.record["threshold"]), "nested_inner_oof")

    def summary_fields(self, trainer: Any, fit: ThresholdFit) -> dict:
        folds = self.record.get("inner_folds", [])
        return {"nested_inner_folds": [{"train_ids": r["train_ids"], "val_ids": r["val_ids"]} for r in folds],
                "selection_rule": self.record.get("selection_rule", self.name),
                "selection_ids": sorted({c for r in folds for c in r["val_ids"]} or self.selection_ids(trainer)),
                "calibration_ids": fit.ids}


PROTOCOLS: dict[str, type[SelectionProtocol]] = {
    p.name: p for p in (NestedSelection, ValidationFoldSelection, InnerSplitSelection, NoSelection)}


def get_protocol(name: str) -> SelectionProtocol:
    """A fresh protocol object for ``--early-stopping NAME``."""
    if name not in PROTOCOLS:
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING_MODES}, got {name!r}.")
    return PROTOCOLS[name]()


# ----------------------------------------------------------------------------- the nested inner CV
def run_inner_cv(trainer: Any) -> dict:
    """Train one model per inner fold of the training fold for ``trainer.max_epochs`` epochs, recording each
    epoch's logits on the inner-validation cases; then :func:`nested_choices`."""
    k = int(trainer.config["inner_folds"])
    data = trainer.data
    ids = list(data.fit_ids)
    y = np.array(data.real_labels, int)
    if min(np.bincount(y, minlength=2)) < k:
        raise ValueError(f"fold {trainer.fold}: nested selection with {k} inner folds needs >= {k} training cases "
                         "of each class; lower cls.inner_folds in neonet_plans.json or use --early-stopping none.")
    epochs = trainer.max_epochs
    logits = np.full((epochs, len(ids)), np.nan)
    inner = []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=trainer.seed)
    for j, (tr, va) in enumerate(tqdm(list(splitter.split(np.zeros(len(ids)), y)),
                                      desc=f"nested fold {trainer.fold}", disable=None)):
        allowed = {ids[i] for i in tr}
        tset = trainer.training_set(allowed, salt=j + 1)
        net, opt = trainer.new_model()
        scaler = make_grad_scaler(trainer.device)
        used = sorted({data.train_item_ids[i] for i in tset["items"]})
        for epoch in range(epochs):
            trainer.run_epoch(net, opt, scaler, tset, epoch, salt=j + 1, track=False)
            logits[epoch, va] = trainer.predict_items(net, va)
        inner.append({"inner_fold": j, "train_ids": sorted(allowed), "val_ids": sorted(ids[i] for i in va),
                      "train_items": used, "prevalence": tset["prevalence"], "budget": tset["budget"]})
        trainer.log("nested: inner fold %d/%d trained (%d items/epoch, %d epochs)", j + 1, k, tset["budget"], epochs)
    record = nested_choices(ids, y, logits, inner, data.real_prevalence, trainer.config, trainer.min_epochs)
    trainer.log("nested: selected epoch %d of %d (inner OOF AUC %.3f, BCE %.3f); calibration %s; threshold %.4f "
                "(%s)", record["selected_epoch"], epochs, record["curve_inner_auc"][record["selected_epoch"]],
                record["curve_inner_bce"][record["selected_epoch"]], record["calibration"]["method"],
                record["threshold"], record["threshold_method"])
    return record


RATIO_RULE = ("the candidate ratio with the highest pooled inner-OOF AUC at its selected epoch; ties (within 1e-9) "
              "to the smaller ratio (less synthetic data)")


def choose_ratio(trainer: Any) -> dict:
    """``--synthetic-ratio auto``: :func:`run_inner_cv` once per candidate ratio (``trainer.ratio_candidates``,
    each training on its own prefix of the synthetic entries; those derived from inner-validation cases are never
    used) and the candidate with the best pooled inner-OOF AUC at its selected epoch, ties to the smaller ratio.

    Returns the chosen candidate's nested record (its epoch, calibration and threshold serve the refit) with
    ``ratio_search``: every candidate's inner AUC, selected epoch and curves, the choice, the rule and the gate
    verdict. Known limitation: the outer fold's generator was trained on all its training cases, inner-validation
    cases included (the copy-rate gate bounds what can leak)."""
    records: dict[float, dict] = {}
    rows = []
    best, best_score = None, -math.inf
    for ratio in sorted(float(r) for r in trainer.ratio_candidates):
        trainer.synthetic_ratio = ratio
        rec = run_inner_cv(trainer)
        e = int(rec["selected_epoch"])
        auc = float(rec["curve_inner_auc"][e])
        rows.append({"ratio": ratio, "inner_auc": auc, "selected_epoch": e,
                     "inner_bce": float(rec["curve_inner_bce"][e]),
                     "n_synthetic": len(trainer.data.synthetic_for_ratio(ratio)),
                     "n_synthetic_inner": [sum(x.startswith("synthetic:") for x in f.get("train_items", []))
                                           for f in rec.get("inner_folds", [])],
                     "curve_inner_auc": rec["curve_inner_auc"], "curve_inner_bce": rec["curve_inner_bce"]})
        records[ratio] = rec
        score = auc if math.isfinite(auc) else -math.inf
        if best is None or score > best_score + 1e-9:
            best, best_score = ratio, score
        trainer.log("auto ratio: candidate %g -> inner OOF AUC %.4f at epoch %d", ratio, auc, e)
    chosen = dict(records[best])
    chosen["ratio_search"] = {"chosen": best, "candidates": rows, "rule": RATIO_RULE,
                              "gate": getattr(trainer, "gate", None),
                              "limitation": "the outer fold's generator was trained on all its training cases, so "
                                            "the inner-validation cases were seen by the generator (bounded by the "
                                            "copy-rate gate)"}
    trainer.log("auto ratio: chose %g of %s (%s)", best, [f"{r:g}" for r in records], RATIO_RULE)
    return chosen


def nested_choices(ids: list[str], y: np.ndarray, logits: np.ndarray, inner: list[dict], real_prevalence: float,
                   config: dict, min_epochs: int) -> dict:
    """The nested protocol's choices from the inner models' per-epoch logits ``(epochs, len(ids))``.

    Each inner model's prior is mapped to the real training prevalence; the epoch is the best smoothed pooled
    inner-OOF AUC (:func:`select_epoch`); calibration and threshold are fitted on that epoch's inner OOF."""
    epochs = logits.shape[0]
    prev = np.array([r["prevalence"] for r in inner])
    fold_of = np.empty(len(ids), int)
    for j, r in enumerate(inner):
        fold_of[[ids.index(c) for c in r["val_ids"]]] = j
    probs = stats.recalibrate_prior_per_item(sigmoid(logits), prev[fold_of], real_prevalence)
    eps = 1e-7
    curve_auc = np.array([stats.roc_auc(y, probs[e]) for e in range(epochs)])
    pe = np.clip(probs, eps, 1 - eps)
    curve_bce = -np.mean(y * np.log(pe) + (1 - y) * np.log(1 - pe), axis=1)
    sel = select_epoch(curve_auc, curve_bce, min_epochs, int(config["selection_window"]))
    oof = probs[sel]
    calibration = stats.fit_calibration(y, oof, config["calibration"], int(config["isotonic_min_per_class"]))
    cal = stats.apply_calibration(oof, calibration)
    method = config["threshold_method"]
    threshold = float(stats.select_threshold(y, cal, method))
    return {"protocol": "nested", "inner_folds": inner, "selected_epoch": int(sel),
            "curve_inner_auc": [float(v) for v in curve_auc], "curve_inner_bce": [float(v) for v in curve_bce],
            "inner_oof": [{"case_id": c, "label": int(l), "probability_prior": float(p), "probability": float(q)}
                          for c, l, p, q in zip(ids, y, oof, cal)],
            "calibration": calibration, "threshold": threshold, "threshold_method": method,
            "selection_rule": f"max centred {config['selection_window']}-epoch mean of pooled inner-OOF "
                              f"AUC, ties by lower BCE, epochs >= {min_epochs}"}
