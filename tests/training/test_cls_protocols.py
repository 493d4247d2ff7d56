"""The NeoCls model-selection protocols (training/cls_protocols.py): one strategy per ``--early-stopping`` mode,
each protocol's choices on hand-made tiny cases (no training), and no code default contradicting the plans."""
from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neonet_toolkit.evaluation import cls_report
from neonet_toolkit.experiment_planning.plans import gpu_full_settings
from neonet_toolkit.training import cls as cls_module
from neonet_toolkit.training.cls_data import FoldData
from neonet_toolkit.training.cls_protocols import (
    PROTOCOLS,
    InnerSplitSelection,
    NestedSelection,
    ThresholdFit,
    get_protocol,
    nested_choices,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import EARLY_STOPPING_MODES, PROTOCOL_LABELS

CONFIG = {"threshold_method": "youden", "inner_val_fraction": 0.25, "selection_window": 1, "calibration": "platt",
          "isotonic_min_per_class": 50}


class MeanLogit(torch.nn.Module):
    """Logit = 8 * (mean intensity - 0.5): a hand-made 'classifier' whose outputs are known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * (x.mean(dim=(1, 2, 3, 4)) - 0.5)


def _patches(values: list[float]) -> np.ndarray:
    return np.stack([np.full((2, 2, 2, 2), v, np.float32) for v in values])


def _fake_trainer(inner_ids: list[str] | None = None) -> SimpleNamespace:
    """8 fit cases (4 positive, brighter), 2 validation cases, optional inner-validation cases."""
    fit = [f"t{i}" for i in range(8)]
    fit_y = [0, 0, 0, 0, 1, 1, 1, 1]
    fit_x = [0.1, 0.2, 0.3, 0.45, 0.55, 0.7, 0.8, 0.9]
    inner = inner_ids or []
    inner_x = _patches([0.2, 0.8][: len(inner)]) if inner else None
    data = FoldData(
        labels=dict(zip(fit, fit_y)), fit_ids=fit, inner_ids=inner, synthetic_entries=[], dropped_synthetic=0,
        x_train=torch.from_numpy(_patches(fit_x)), y_train=torch.tensor(fit_y, dtype=torch.float32),
        real_labels=fit_y, train_item_ids=list(fit), x_val=_patches([0.3, 0.6]), y_val=np.array([0, 1]),
        x_inner=inner_x, y_inner=np.array([0, 1][: len(inner)]) if inner else None, real_prevalence=0.4)
    return SimpleNamespace(data=data, device=torch.device("cpu"), config=CONFIG, val_ids=["v1", "v0"])


# ----------------------------------------------------------------------------- registry and interface
def test_one_strategy_per_mode_looked_up_by_name():
    assert tuple(PROTOCOLS) == EARLY_STOPPING_MODES
    for name in EARLY_STOPPING_MODES:
        p = get_protocol(name)
        assert p.name == name and p.label == PROTOCOL_LABELS[name]
    assert get_protocol("nested") is not get_protocol("nested")  # fresh state per trainer
    assert {n: get_protocol(n).monitor for n in EARLY_STOPPING_MODES} == {
        "nested": None, "val": "val", "inner": "inner", "none": None}
    assert [n for n in EARLY_STOPPING_MODES if get_protocol(n).early_stops] == ["val", "inner"]
    assert [n for n in EARLY_STOPPING_MODES if get_protocol(n).final_when_finished] == ["nested"]
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        get_protocol("best")


def test_only_inner_holds_out_part_of_the_training_fold():
    ids = [f"c{i}" for i in range(8)]
    labels = dict(zip(ids, [0, 0, 0, 0, 1, 1, 1, 1]))
    for name in ("nested", "val", "none"):
        assert get_protocol(name).split_training(ids, labels, CONFIG, 0) == (ids, [])
    fit, held = get_protocol("inner").split_training(ids, labels, CONFIG, 0)
    assert len(held) == 2 and sorted(fit + held) == ids and {labels[c] for c in held} == {0, 1}


# ----------------------------------------------------------------------------- where the threshold is fitted
def _identity(p: np.ndarray) -> np.ndarray:
    return p


@pytest.mark.parametrize("name", ["val", "none"])
def test_val_and_none_fit_the_threshold_on_the_training_cases(name):
    tr = _fake_trainer()
    fit = get_protocol(name).fit_threshold(tr, MeanLogit(), _identity)
    assert fit.source == "training_cases" and fit.ids == tr.data.fit_ids
    assert fit.calibration == {"method": "none"} and list(fit.y) == [0, 0, 0, 0, 1, 1, 1, 1]
    # separable at 0.5 intensity: youden's threshold separates them perfectly
    op = stats.sensitivity_specificity(fit.y, fit.probability, fit.threshold)
    assert op["sensitivity"] == 1 and op["specificity"] == 1
    fields = get_protocol(name).summary_fields(tr, fit)
    assert fields["selection_ids"] == (["v0", "v1"] if name == "val" else [])
    assert fields["selection_rule"] == name and fields["calibration_ids"] == [] and fields["nested_inner_folds"] == []


def test_inner_fits_the_threshold_on_the_inner_split():
    tr = _fake_trainer(inner_ids=["i1", "i0"])
    p = InnerSplitSelection()
    fit = p.fit_threshold(tr, MeanLogit(), _identity)
    assert fit.source == "inner_split" and fit.ids == ["i1", "i0"] and list(fit.y) == [0, 1]
    assert p.summary_fields(tr, fit)["selection_ids"] == ["i0", "i1"]


def test_single_class_threshold_data_falls_back_to_the_real_prevalence():
    tr = _fake_trainer()
    tr.data.y_train[:] = 1
    fit = get_protocol("none").fit_threshold(tr, MeanLogit(), _identity)
    assert fit.threshold == pytest.approx(0.4)


def test_nested_takes_calibration_and_threshold_from_its_record():
    tr = _fake_trainer()
    p = NestedSelection()
    p.record = {"inner_oof": [{"case_id": "t0", "label": 0, "probability_prior": 0.2, "probability": 0.25},
                              {"case_id": "t7", "label": 1, "probability_prior": 0.7, "probability": 0.8}],
                "calibration": {"method": "platt", "a": 1.0, "b": 0.0}, "threshold": 0.5,
                "inner_folds": [{"train_ids": ["t7"], "val_ids": ["t0"]}, {"train_ids": ["t0"], "val_ids": ["t7"]}],
                "selection_rule": "rule"}
    fit = p.fit_threshold(tr, None, _identity)  # no model is called: everything comes from the inner folds
    assert isinstance(fit, ThresholdFit) and fit.ids == ["t0", "t7"] and fit.source == "nested_inner_oof"
    assert fit.calibration == {"method": "platt", "a": 1.0, "b": 0.0} and fit.threshold == 0.5
    np.testing.assert_array_equal(fit.raw, [0.2, 0.7])
    np.testing.assert_array_equal(fit.probability, [0.25, 0.8])
    np.testing.assert_array_equal(fit.y, [0, 1])
    fields = p.summary_fields(tr, fit)
    assert fields["selection_ids"] == ["t0", "t7"] and fields["calibration_ids"] == ["t0", "t7"]
    assert fields["selection_rule"] == "rule" and len(fields["nested_inner_folds"]) == 2


def test_nested_choices_pick_the_separating_epoch():
    ids = [f"c{i}" for i in range(6)]
    y = np.array([0, 1, 0, 1, 0, 1])
    logits = np.zeros((3, 6))
    logits[1] = np.where(y == 1, 2.0, -2.0)   # only epoch 1 separates the classes
    logits[2] = np.where(y == 1, -1.0, 1.0)   # epoch 2 is inverted
    inner = [{"val_ids": ["c0", "c1", "c2"], "prevalence": 0.5}, {"val_ids": ["c3", "c4", "c5"], "prevalence": 0.5}]
    rec = nested_choices(ids, y, logits, inner, 0.5, CONFIG, min_epochs=0)
    assert rec["selected_epoch"] == 1 and rec["curve_inner_auc"] == pytest.approx([0.5, 1.0, 0.0])
    assert [r["case_id"] for r in rec["inner_oof"]] == ids
    p = np.array([r["probability"] for r in rec["inner_oof"]])
    assert p[y == 1].min() >= rec["threshold"] > p[y == 0].max()
    # epochs before min_epochs are not candidates
    assert nested_choices(ids, y, logits, inner, 0.5, CONFIG, min_epochs=3)["selected_epoch"] == 2


# ----------------------------------------------------------------------------- code defaults vs the plans
def test_no_code_default_contradicts_the_plans_early_stopping():
    plans_default = gpu_full_settings()["cls"]["early_stopping"]
    assert plans_default == "nested"
    fns = [cls_module.ClsTrainer.__init__, cls_module.run_name, cls_report.tables]
    for fn in fns:
        default = inspect.signature(fn).parameters["early_stopping"].default
        assert default in (None, inspect.Parameter.empty, plans_default), (fn.__qualname__, default)
    import argparse

    p = argparse.ArgumentParser()
    cls_module.add_arguments(p)
    assert p.parse_args([]).early_stopping is None  # None = the plans' cls.early_stopping


def test_trainer_default_protocol_is_the_plans(planned_phantom, tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import test_cls_utils as U

    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    tr = cls_module.ClsTrainer(env["dataset_name"], 0, device="cpu")
    assert tr.early_stopping == tr.config["early_stopping"] and tr.protocol.name == tr.early_stopping
    assert tr.output_folder.parent.name.startswith(f"cls_pattennet_0_es{tr.early_stopping}__")
