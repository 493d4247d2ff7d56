"""Shared fixtures: isolated nnU-Net/NeoNet folders and a tiny planned phantom dataset.

Everything runs on CPU with tiny shapes; the planned phantom is built once per test session.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("nnUNet_n_proc_DA", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def set_env(root: Path) -> dict:
    env = {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "nnunet_results"),
        "neonet_results": str(root / "neonet_results"),
    }
    for k, v in env.items():
        Path(v).mkdir(parents=True, exist_ok=True)
        os.environ[k] = v
    return env


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Fresh, empty folders for the four path variables (restored after the test)."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
        (tmp_path / k).mkdir()
    return tmp_path


TINY_PHANTOM = dict(n_train=20, n_test=2, shape_xyz=(48, 48, 24), spacing=(1.5, 1.5, 3.0), shape_jitter=2, seed=0,
                    neonet_options={"crop_size": [32, 32, 16]})


@pytest.fixture(scope="session")
def planned_phantom(tmp_path_factory):
    """Dataset 501 (20 train cases, 1:2 PNI) planned with neonet_plan_and_preprocess.

    Returns a dict with 'root', 'env', 'dataset_name', 'preprocessed', 'raw'. Tests must not modify
    it: a test that trains or writes there copies the folders first (see tests/training/test_seg.py and
    tests/test_cls_utils.py for copy helpers).
    """
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess

    root = tmp_path_factory.mktemp("phantom501")
    env = set_env(root)
    raw = make_phantom_dataset(env["nnUNet_raw"], 501, "NeoNetPhantom", **TINY_PHANTOM)
    report = plan_and_preprocess(501, num_processes=1)
    return {"root": root, "env": env, "dataset_name": raw.name, "raw": raw,
            "preprocessed": Path(env["nnUNet_preprocessed"]) / raw.name, "report": report}


@pytest.fixture
def phantom_env(planned_phantom, monkeypatch):
    """Point the path variables at the session's planned phantom for one test."""
    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    return planned_phantom
