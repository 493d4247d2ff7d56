"""Where data and results live.

NeoNet uses nnU-Net's three environment variables (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``) plus its own ``neonet_results``. A variable the user has set always wins.
When a variable is unset, NeoNet falls back to folders inside the project checkout (or the
current directory for a non-editable install) so the demo runs without any setup:

==================== =================================================
variable             default when unset
==================== =================================================
nnUNet_raw           ``<root>/nnUNet_raw``
nnUNet_preprocessed  ``<root>/neonet_results/nnUNet_preprocessed``
nnUNet_results       ``<root>/neonet_results/nnUNet_results``
neonet_results       ``<root>/neonet_results``
==================== =================================================

:func:`ensure_environment` writes the defaults into ``os.environ`` (``setdefault``), so that
nnU-Net's own lazily-read paths resolve to the same folders.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")


def project_root() -> Path:
    """The source checkout when running from one, else the current working directory."""
    env = os.environ.get("NEONET_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "setup.py").is_file() and (here / "neonet_toolkit").is_dir():
        return here
    return Path.cwd().resolve()


def _defaults() -> dict[str, Path]:
    root = project_root()
    return {
        "nnUNet_raw": root / "nnUNet_raw",
        "nnUNet_preprocessed": root / "neonet_results" / "nnUNet_preprocessed",
        "nnUNet_results": root / "neonet_results" / "nnUNet_results",
        "neonet_results": root / "neonet_results",
    }


def ensure_environment() -> dict[str, Path]:
    """Fill unset path variables with the defaults above and return all four as Paths."""
    out = {}
    for name, default in _defaults().items():
        value = os.environ.get(name)
        if not value:
            os.environ[name] = str(default)
            logger.debug("%s is unset, using %s", name, default)
        out[name] = Path(os.environ[name])
    return out


def nnunet_raw() -> Path:
    return ensure_environment()["nnUNet_raw"]


def nnunet_preprocessed() -> Path:
    return ensure_environment()["nnUNet_preprocessed"]


def nnunet_results() -> Path:
    return ensure_environment()["nnUNet_results"]


def neonet_results() -> Path:
    return ensure_environment()["neonet_results"]


def find_dataset_name(dataset: int | str) -> str:
    """Resolve ``501`` / ``"501"`` / ``"Dataset501_Name"`` to ``Dataset501_Name``.

    Looks in nnUNet_raw, nnUNet_preprocessed, nnUNet_results and neonet_results, like
    nnU-Net's ``convert_id_to_dataset_name`` but with NeoNet's result folder too.
    """
    if isinstance(dataset, str) and dataset.startswith("Dataset"):
        return dataset
    try:
        dataset_id = int(dataset)
    except (TypeError, ValueError):
        raise ValueError(
            f"Dataset {dataset!r} is neither a number (e.g. 501) nor a name like 'Dataset501_Name'."
        ) from None
    prefix = f"Dataset{dataset_id:03d}_"
    env = ensure_environment()
    found = set()
    for root in env.values():
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if not found:
        raise FileNotFoundError(
            f"No dataset with id {dataset_id} ({prefix}*) in any of: "
            + ", ".join(f"{k}={v}" for k, v in env.items())
            + f". Put the dataset there as Dataset{dataset_id:03d}_<Name> (or, for the phantom, run "
            f"`neonet_make_demo_dataset -d {dataset_id}`), or set nnUNet_raw to the folder that holds it."
        )
    if len(found) > 1:
        raise RuntimeError(
            f"More than one dataset uses id {dataset_id}: {sorted(found)}. Rename or remove all but one."
        )
    return found.pop()
