"""Checkpoint I/O: atomic saves, and loads that never run code (``torch.load(..., weights_only=True)``).

A checkpoint that carries anything but tensors and plain values, or that is truncated, is refused with
:class:`UnsafeCheckpointError` naming the file, what it references (listed without running it) and the fix:
restore the original file or retrain the fold.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from neonet_toolkit.utilities.identifiers import (
    FINAL_CHECKPOINT,
    ResultLayout,
    parse_cls_run_name,
    parse_fold_folder_name,
    parse_gen_stage_dir,
    parse_stage_folder_name,
)
from neonet_toolkit.utilities.safe_pickle import UnsafePickleError, pickle_globals

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint references code outside the allow-list (or is not a loadable checkpoint)."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. disk full: keep the previous checkpoint, leave no partial file
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A NeoNet checkpoint (a dict of tensors and plain values) loaded with ``weights_only=True``.

    Raises :class:`UnsafeCheckpointError` naming the file, why it was refused (the globals a planted object
    references, listed without running them, or the damage) and the fix; nothing in a refused file runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found; train this stage/fold first.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only loader met an object it does not allow
        found = checkpoint_globals(path)
        what = (f"it references {found}, which a NeoNet checkpoint never holds (only tensors and plain values)"
                if found else f"it holds objects a NeoNet checkpoint never holds ({_reason(e)})")
        raise UnsafeCheckpointError(f"Refused to load {path}: {what}. Loading it could run code planted in the "
                                    f"file, so nothing in it was loaded. {_restore_fix(path)}") from None
    except Exception as e:  # truncated zip, empty file, not a checkpoint at all
        raise UnsafeCheckpointError(f"Refused to load {path}: it is not a complete PyTorch checkpoint ({_reason(e)}); "
                                    f"the file is truncated or damaged. {_restore_fix(path)}") from None
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"Refused to load {path}: it holds a {type(state).__name__}, not a NeoNet "
                                    f"checkpoint (a dict of weights and settings). {_restore_fix(path)}")
    return state


def checkpoint_globals(path: str | Path) -> list[str]:
    """The globals a checkpoint references beyond torch's weights-only allow-list, listed without running it
    (zip checkpoints through torch, older plain-pickle ones through :func:`~.safe_pickle.pickle_globals`);
    empty when none can be listed."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        try:
            return sorted(pickle_globals(Path(path).read_bytes()))
        except (UnsafePickleError, OSError):
            return []


def _reason(e: BaseException) -> str:
    """A short reason for a failed load; torch's advice to load with weights_only=False is never passed on."""
    text = str(e).strip().split("\n")[0].split(". ")[0]
    if "weights_only" in text or "weights only" in text.lower():
        text = "the weights-only loader refused its content"
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _restore_fix(path: Path) -> str:
    """The fix for a refused NeoNet checkpoint: the original file, or the command that retrains its fold."""
    fold = parse_fold_folder_name(path.parent.name)
    try:
        stage_dir, _ = parse_stage_folder_name(path.parent.parent.name)
    except ValueError:
        stage_dir = None
    if fold is None or stage_dir is None:
        return "Replace it with the original file, or retrain the model that wrote it."
    ds = path.parent.parent.parent.name  # the dataset folder name, as the commands take it
    cls_run, gen_run = parse_cls_run_name(stage_dir), parse_gen_stage_dir(stage_dir)
    stage = "cls" if cls_run is not None else gen_run.stage if gen_run is not None else stage_dir
    options = f" with the options that made {stage_dir}" if stage != stage_dir else ""
    return (f"Replace it with the original file, or retrain the fold: `neonet_train {ds} {stage} {fold} --overwrite`"
            f"{options}.")
# ----------------------------------------------------------------------------- checkpoints handed to nnU-Net
# nnU-Net loads its own checkpoints with ``torch.load(weights_only=False)``, which runs any code a pickle
# carries. Before NeoNet hands a model folder to nnU-Net, every checkpoint it will read is checked here
# without executing it: the globals it references must all be on this allow-list (read off real nnU-Net
# 2.8 checkpoints: tensors and containers need none; its training log and EMA hold numpy float scalars),
# and the file must then load with ``weights_only=True``.
NNUNET_CHECKPOINT_GLOBALS = tuple(
    g for g in (getattr(np, "_core", np.core).multiarray.scalar, np.dtype,
                *(getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                                  "Int32DType", "BoolDType") if hasattr(np, "dtypes")))
)


def _global_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def verify_checkpoint(path: str | Path, allowed=NNUNET_CHECKPOINT_GLOBALS) -> None:
    """Raise :class:`UnsafeCheckpointError` unless ``path`` loads with ``weights_only=True`` under ``allowed``.

    Nothing in the file is executed: the referenced globals are listed from the pickle stream first."""
    load_verified_checkpoint(path, allowed)


def load_verified_checkpoint(path: str | Path, allowed=NNUNET_CHECKPOINT_GLOBALS) -> dict:
    """:func:`verify_checkpoint`, returning what the one ``weights_only=True`` load (on the CPU) read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found.")
    ok = {_global_name(g) for g in allowed}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # not a torch zip / pickle at all, truncated, ...
        raise UnsafeCheckpointError(f"{path} is not a readable PyTorch checkpoint ({_reason(e)}). "
                                    "Replace it with the original file.") from None
    bad = sorted(set(found) - ok)
    if bad:
        raise UnsafeCheckpointError(
            f"{path} references {bad}, which a model checkpoint never needs: loading it (nnU-Net's loader runs "
            "whatever code a checkpoint carries) could run code planted in the file. Refusing. If you trust this file and its "
            "source, rerun with --trust-checkpoints (logged and written to provenance).")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnsafeCheckpointError(f"{path} does not load as a plain checkpoint ({_reason(e)}). "
                                    "Replace it with the original file, or rerun with --trust-checkpoints if "
                                    "you trust it.") from None


def verify_model_folder(folder: str | Path, folds=None, checkpoint_name: str = FINAL_CHECKPOINT,
                        trust: bool = False) -> list[Path]:
    """Check every ``fold_N/<checkpoint_name>`` (all folds, or ``folds``) of an nnU-Net model folder before
    nnU-Net loads it. With ``trust=True`` nothing is checked and a warning is logged. Returns the files."""
    folder = Path(folder)
    fold_dirs = (ResultLayout.nnunet_fold_candidates(folder) if folds is None
                 else [folder / ResultLayout.fold_folder_name(f) for f in folds])
    files = [d / checkpoint_name for d in fold_dirs if (d / checkpoint_name).is_file()]
    if trust:
        logger.warning("--trust-checkpoints: %d checkpoint(s) in %s are loaded by nnU-Net WITHOUT the safety check "
                       "(weights_only=False can run code a file carries)", len(files), folder)
        return files
    for f in files:
        verify_checkpoint(f)
    return files


# ----------------------------------------------------------------------------- upstream provenance
def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


class UpstreamMismatchError(ValueError):
    """A stage's recorded upstream checkpoint is not the one on disk any more."""


def upstream_record(paths: dict[str, str | Path]) -> dict[str, dict]:
    """``{name: {"path", "sha256"}}`` of the upstream checkpoints a stage is built on."""
    return {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in paths.items()}


def check_upstream(recorded: dict | None, current: dict[str, str | Path], what: str, fix: str) -> None:
    """Refuse when a checkpoint recorded under ``recorded`` (from :func:`upstream_record`) differs from the
    file at ``current[name]`` now, e.g. the VAE was retrained after the LDM that uses it."""
    for name, path in current.items():
        rec = (recorded or {}).get(name)
        if rec is None:
            continue  # written before provenance was recorded
        now = file_sha256(path)
        if now != rec["sha256"]:
            raise UpstreamMismatchError(
                f"{what} was built on {name} checkpoint {rec['path']} (sha256 {rec['sha256'][:12]}), but {path} "
                f"now has sha256 {now[:12]}: the {name} was retrained or replaced since. {fix}")


def check_synthetic_set(manifest: dict, manifest_file: str | Path, current: dict[str, str | Path], what: str,
                        fix: str) -> None:
    """Refuse a synthetic set made by models that are not the ones on disk any more.

    A generation manifest (``neonet_generate``) records the SHA-1 of the ControlNet checkpoint that made it
    (``settings.checkpoint_sha1``) and of that ControlNet's upstream (``settings.upstream_sha1``: vae, ldm).
    ``current`` maps those names (``controlnet``, ``vae``, ``ldm``) to the files now in use; a file that no
    longer exists is not compared (models may be deleted once their set is generated)."""
    settings = manifest.get("settings") or {}
    recorded = {"controlnet": settings.get("checkpoint_sha1"), **(settings.get("upstream_sha1") or {})}
    for name, path in current.items():
        rec = recorded.get(name)
        if rec is None or not Path(path).is_file():
            continue
        now = file_digest(path, "sha1")
        if now != rec:
            raise UpstreamMismatchError(
                f"{what}: the synthetic set {manifest_file} was generated with a {name} checkpoint of sha1 "
                f"{rec[:12]}, but {path} now has sha1 {now[:12]}: the {name} was retrained or replaced since. {fix}")
