"""No code default contradicts the plans: every public function or class that takes a stage setting by its
plans name either defaults to ``None`` ("from the plans") or to the value of the default preset (``gpu_full``).

A contradiction in a module owned elsewhere is marked ``xfail(strict=True)`` with its file:line, so the fix
there turns this test green and the marker has to go."""
from __future__ import annotations

import inspect

import pytest

from neonet_toolkit.evaluation import cls as evaluation_cls
from neonet_toolkit.evaluation import cls_report
from neonet_toolkit.experiment_planning.plans import gpu_full_settings
from neonet_toolkit.generation import generate
from neonet_toolkit.networks import pattennet
from neonet_toolkit.training import cls as training_cls
from neonet_toolkit.training import cls_data, controlnet, ldm, planning, vae, vqvae
from neonet_toolkit.training.seg import api as seg_api
from neonet_toolkit.training.seg import trainers as seg_trainers
from neonet_toolkit.utilities import identifiers, stats

PRESET = gpu_full_settings()


def _xfail(where: str):
    return pytest.mark.xfail(strict=True, reason=f"code default contradicts the plans at {where} (not this "
                                                 "engineer's file: reported to the lead)")


# (callable, stage whose settings it takes by name)
CASES = [
    pytest.param(training_cls.ClsTrainer, "cls", id="ClsTrainer"),
    pytest.param(evaluation_cls.evaluate_cls, "cls", id="evaluate_cls"),
    pytest.param(seg_api.train_seg, "seg", id="train_seg"),
    pytest.param(seg_trainers.resolve_seg_settings, "seg", id="resolve_seg_settings"),
    pytest.param(planning.plan_and_preprocess, "cls", id="plan_and_preprocess"),
    pytest.param(vae.VAETrainer, "vae", id="VAETrainer"),
    pytest.param(vqvae.VQVAETrainer, "vqvae", id="VQVAETrainer"),
    pytest.param(ldm.LDMTrainer, "ldm", id="LDMTrainer"),
    pytest.param(controlnet.ControlNetTrainer, "controlnet", id="ControlNetTrainer"),
    pytest.param(pattennet.PattenNet, "cls", id="PattenNet"),
    pytest.param(stats.fit_calibration, "cls", id="fit_calibration"),
    pytest.param(cls_data.select_epoch, "cls", id="select_epoch"),
    pytest.param(generate.generate_synthetic_set, "sampling", id="generate_synthetic_set"),
    pytest.param(generate.NeoGenModels, "ldm", id="NeoGenModels"),
    pytest.param(identifiers.gen_stage_dir, "ldm", id="gen_stage_dir"),
    pytest.param(identifiers.GenRunId, "ldm", id="GenRunId"),
    pytest.param(pattennet.FinePattenNet, "cls", id="FinePattenNet"),
    pytest.param(training_cls.run_name, "cls", id="cls.run_name"),
    pytest.param(cls_report.tables, "cls", id="cls_report.tables"),
    pytest.param(identifiers.cls_run_name, "cls", id="cls_run_name"),
    pytest.param(identifiers.ClsRunId, "cls", id="ClsRunId"),
]


def _code_defaults(fn, stage: str) -> dict:
    """The parameters of ``fn`` named like a setting of ``stage``, with their defaults."""
    params = inspect.signature(fn).parameters
    return {k: p.default for k, p in params.items() if k in PRESET[stage] and p.default is not inspect.Parameter.empty}


def _same(code, plans) -> bool:
    if isinstance(code, (tuple, list)) and isinstance(plans, (tuple, list)):
        return list(code) == list(plans)
    return code == plans


@pytest.mark.parametrize("fn, stage", CASES)
def test_code_defaults_agree_with_the_plans(fn, stage):
    contradictions = {k: (v, PRESET[stage][k]) for k, v in _code_defaults(fn, stage).items()
                      if v is not None and not _same(v, PRESET[stage][k])}
    assert not contradictions, f"{fn.__qualname__}: code default vs {stage} preset {contradictions}"


def test_the_cases_cover_every_early_stopping_parameter():
    """The setting the issue names: every public early_stopping parameter is among the cases above."""
    covered = {p.values[0] for p in CASES}
    modules = [training_cls, evaluation_cls, cls_report, identifiers, seg_api, planning]
    found, seen = [], 0
    for mod in modules:
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__ or not callable(obj):
                continue
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            p = params.get("early_stopping")
            seen += p is not None
            if p is not None and p.default not in (inspect.Parameter.empty, None):
                found.append(obj)
    assert seen >= 5  # the scan does see the parameter (ClsTrainer, evaluate_cls, tables, cls_run_name, ClsRunId...)
    assert all(obj in covered for obj in found), [o for o in found if o not in covered]


def test_the_check_finds_a_contradiction():
    def bad(early_stopping: str = "val", lr: float | None = None, epochs: int = PRESET["cls"]["epochs"]):
        return early_stopping, lr, epochs

    assert _code_defaults(bad, "cls") == {"early_stopping": "val", "lr": None, "epochs": 300}
    assert not _same("val", PRESET["cls"]["early_stopping"])
