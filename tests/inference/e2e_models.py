"""Shared by the prediction tests: the dataset id of the tiny trained models and the path-variable context
(a uniquely named module: ``conftest`` is ambiguous between tests/ and tests/inference/)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

DS = 503
ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")


@contextmanager
def trained_env(root: Path):
    """The four path variables set to ``root``'s folders, restored afterwards."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    for k in ENV_KEYS:
        os.environ[k] = str(root / k)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
