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

:func:`ensure_environment` only reads: it returns the four folders (defaults filled in) and never
writes ``os.environ``. nnU-Net reads its variables itself, lazily, on every access; code that calls
nnU-Net runs inside :func:`nnunet_environment`, which sets the missing variables (and
``nnUNet_extTrainer`` so nnU-Net finds the NeoSeg trainers) for the duration of the call and
restores the previous environment afterwards. The console entry points apply the same defaults to
their own process once, at start (:func:`apply_defaults_to_process`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Iterator, Mapping

logger = logging.getLogger(__name__)

ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")


class AmbiguousDatasetError(ValueError):
    """A dataset id names more than one ``DatasetXXX_*`` folder (the message lists them and the fix)."""


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
    """The four folders as Paths: the user's variable where set, else the default above (read only)."""
    return {name: Path(os.environ.get(name) or default) for name, default in _defaults().items()}


EXT_TRAINER_ENV = "nnUNet_extTrainer"


def nnunet_ext_trainer_dir() -> Path:
    """The folder to put into ``nnUNet_extTrainer`` so nnU-Net finds the NeoSeg trainers."""
    return Path(__file__).resolve().parent / "training" / "seg" / "nnunet_ext"


def _with_ext_trainer(current: str | None) -> str:
    d = str(nnunet_ext_trainer_dir())
    parts = [p for p in (current or "").split(os.pathsep) if p.strip()]
    if not any(os.path.realpath(p) == os.path.realpath(d) for p in parts):
        parts.append(d)
    return os.pathsep.join(parts)


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, object | None]) -> Iterator[None]:
    """Set environment variables for the duration of a block (``None`` leaves one as it is); restore after."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = str(v)
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def nnunet_environment_values(extra: Mapping[str, object | None] | None = None) -> dict[str, str]:
    """What :func:`nnunet_environment` sets: the four folders, ``nnUNet_extTrainer``, then ``extra``."""
    values = {k: str(v) for k, v in ensure_environment().items()}
    values[EXT_TRAINER_ENV] = _with_ext_trainer(os.environ.get(EXT_TRAINER_ENV))
    values.update({k: str(v) for k, v in (extra or {}).items() if v is not None})
    return values


@contextlib.contextmanager
def nnunet_environment(extra: Mapping[str, object | None] | None = None) -> Iterator[dict[str, str]]:
    """Run nnU-Net code with NeoNet's folders and trainers visible; the environment is restored afterwards."""
    values = nnunet_environment_values(extra)
    with scoped_environ(values):
        yield values


def apply_defaults_to_process() -> None:
    """For console entry points only (they own their process): set the unset folder variables and
    ``nnUNet_extTrainer`` once, so child processes and nnU-Net see the same folders."""
    for name, value in ensure_environment().items():
        os.environ.setdefault(name, str(value))
    os.environ[EXT_TRAINER_ENV] = _with_ext_trainer(os.environ.get(EXT_TRAINER_ENV))


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

    A dataset context resolved once per command (an object with a ``dataset_name`` attribute, e.g.
    :class:`neonet_toolkit.utilities.identifiers.ResultLayout`) is returned as its name without looking again.

    Looks in nnUNet_raw, nnUNet_preprocessed, nnUNet_results and neonet_results, like
    nnU-Net's ``convert_id_to_dataset_name`` but with NeoNet's result folder too. Two names with the same id
    raise :class:`AmbiguousDatasetError` (listing the folders), also for a full name: nnU-Net's own steps
    address a dataset by its id.
    """
    resolved = getattr(dataset, "dataset_name", None)
    if isinstance(resolved, str):
        return resolved
    if isinstance(dataset, str) and dataset.startswith("Dataset"):
        try:
            dataset_id = int(dataset[7:10])
        except ValueError:
            return dataset
        _check_unambiguous(dataset_id, _datasets_with_id(dataset_id), dataset)
        return dataset
    try:
        dataset_id = int(dataset)
    except (TypeError, ValueError):
        raise ValueError(
            f"Dataset {dataset!r} is neither a number (e.g. 501) nor a name like 'Dataset501_Name'."
        ) from None
    found = _datasets_with_id(dataset_id)
    if not found:
        env = ensure_environment()
        raise FileNotFoundError(
            f"No dataset with id {dataset_id} (Dataset{dataset_id:03d}_*) in any of: "
            + ", ".join(f"{k}={v}" for k, v in env.items())
            + f". Put the dataset there as Dataset{dataset_id:03d}_<Name> (or, for the phantom, run "
            f"`neonet_make_demo_dataset -d {dataset_id}`), or set nnUNet_raw to the folder that holds it."
        )
    _check_unambiguous(dataset_id, found)
    return next(iter(found))


def _datasets_with_id(dataset_id: int) -> dict[str, list[str]]:
    """``{DatasetXXX_Name: [variables whose folder holds it]}`` for every folder named with this id."""
    prefix = f"Dataset{dataset_id:03d}_"
    found: dict[str, list[str]] = {}
    for var, root in ensure_environment().items():
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if p.is_dir() and p.name.startswith(prefix):
                    found.setdefault(p.name, []).append(var)
    return found


def _check_unambiguous(dataset_id: int, found: dict[str, list[str]], requested: str | None = None) -> None:
    names = set(found) | ({requested} if requested else set())
    if len(names) <= 1:
        return
    env = ensure_environment()
    where = "; ".join(f"{name} in " + ", ".join(f"{var} ({env[var] / name})" for var in found[name])
                      for name in sorted(found))
    raise AmbiguousDatasetError(
        f"Dataset id {dataset_id} is ambiguous: {len(names)} dataset names use it ({where}). nnU-Net and NeoNet "
        f"address a dataset by its id, so exactly one name may use it: rename or move away the folder(s) of the "
        f"other name(s) (e.g. give one dataset another id), then rerun."
    )


def with_nnunet_environment(fn):
    """Decorator: run ``fn`` inside :func:`nnunet_environment` (for API functions that call nnU-Net)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with nnunet_environment():
            return fn(*args, **kwargs)

    return wrapper
