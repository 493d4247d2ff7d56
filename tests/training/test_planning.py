"""One planning path: the API (used by the demo and the tests) and the CLI run the same function, resource
fitting included."""
from __future__ import annotations

import inspect

import neonet_toolkit.run.plan_and_preprocess as cli
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE
from neonet_toolkit.training import planning
from neonet_toolkit.training.resources import DEFAULT_GPU_MEMORY_TARGET_GB
from neonet_toolkit.utilities.io import load_json


def test_api_planning_writes_the_resource_estimates(planned_phantom):
    """The session phantom is planned through the Python API: its plans carry the estimates the CLI writes."""
    plans = load_json(planned_phantom["preprocessed"] / NEONET_PLANS_FILE)
    est = plans["resource_estimates"]
    assert est["gpu_memory_target_gb"] == DEFAULT_GPU_MEMORY_TARGET_GB
    assert set(est["configurations"]) == set(plans["configurations"])
    assert {"vae", "ldm", "controlnet", "cls"} <= set(est["configurations"]["gpu_full"])
    assert planned_phantom["report"]["resource_estimates"] == est


def test_cli_only_parses_and_calls_the_api(monkeypatch, isolated_env, capsys):
    assert cli.plan_and_preprocess is planning.plan_and_preprocess
    seen = []

    def fake(dataset, **kw):
        seen.append((dataset, kw))
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "plan_and_preprocess", fake)
    assert cli.main(["-d", "501", "--no_resource_estimates", "--gpu_memory_target_gb", "24"]) == 2
    assert seen == [("501", {"num_processes": 2, "verify_dataset_integrity": False, "clean": False,
                             "overwrite_splits": False, "n_folds": 5, "seed": 12345, "crop_size_xyz": None,
                             "repeats": None, "resource_estimates": False, "gpu_memory_target_gb": 24.0})]
    seen.clear()
    assert cli.main(["-d", "501"]) == 2
    api_defaults = {k: p.default for k, p in inspect.signature(planning.plan_and_preprocess).parameters.items()
                    if k != "dataset"}
    assert seen[0][1] == api_defaults  # the CLI's defaults are the API's defaults
