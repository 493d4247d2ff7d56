"""Pickles NeoNet did not write itself: checked without running them, and loaded under an allow-list.

nnU-Net keeps each preprocessed case's properties in ``nnUNet_preprocessed/DatasetXXX/<data_identifier>/CASE.pkl``
and reads them with a plain ``pickle.load`` (``nnUNetDataset*.load_case``), which runs any code a planted
object carries (``__reduce__`` returning ``(os.system, ("...",))``). NeoNet reads those files itself (TLCR patch
extraction, predicted-mask patches) and hands the folder to nnU-Net (NeoSeg training), so before either:

* :func:`pickle_globals` lists every global a pickle references (``GLOBAL``, ``STACK_GLOBAL``, ``INST``; the
  callables ``REDUCE`` / ``NEWOBJ`` / ``OBJ`` / ``BUILD`` can reach are only ever loaded by these opcodes) by
  walking its opcodes with :func:`pickletools.genops`, the way
  ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists a checkpoint's globals: nothing is executed;
* :func:`verify_preprocessed_folder` refuses the dataset's preprocessed folder when any ``.pkl`` references a
  global outside :data:`NNUNET_PROPERTIES_GLOBALS` (or cannot be read as a pickle), naming the file, the
  global(s) and the fix (regenerate the folder from the raw data);
* :class:`RestrictedUnpickler` / :func:`load_pickle` load such a file for NeoNet's own reads with the same
  allow-list enforced by ``find_class``.
"""
from __future__ import annotations

import io
import logging
import pickle
import pickletools
import re
import time
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

# Exactly the globals nnU-Net 2.8.1 writes into a case's properties pickle. Found by writing real files, never
# guessed: the 20 cases of the test phantom planned with `neonet_plan_and_preprocess` (nnU-Net's
# DefaultPreprocessor, SimpleITKIO), and the same cases re-run through `DefaultPreprocessor.run_case_npy` with
# each 3D reader nnU-Net can pick for NIfTI (SimpleITKIO, SimpleITKIOWithReorient, NibabelIO,
# NibabelIOWithReorient) and written with nnU-Net's own `write_pickle`; the globals were listed with
# :func:`pickle_globals`. Every file referenced a subset of these four (numpy 2.4): arrays
# (class_locations, the nibabel affines) are `ndarray` + `_reconstruct` + `dtype`; numpy float scalars
# (spacing) are `scalar` + `dtype`. Tuples, lists, dicts, ints, floats and strings need no global.
_NUMPY2_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy.dtype",
                   "numpy.ndarray")
# numpy < 2.0 pickles the same two functions under their old module name (numpy._core was numpy.core before
# NumPy 2.0; numpy 2 keeps numpy.core.multiarray as an alias of numpy._core.multiarray, checked:
# `numpy.core.multiarray._reconstruct is numpy._core.multiarray._reconstruct`), so a folder preprocessed with
# numpy 1.x references these instead.
_NUMPY1_ALIASES = ("numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar")
# nnU-Net's `write_pickle` uses pickle's default protocol: 4 up to Python 3.13, 5 from Python 3.14. With protocol 5
# numpy pickles arrays through `_frombuffer` instead of `ndarray` + `_reconstruct` (checked: the phantom's
# properties dumped with protocol=5 reference numpy._core.numeric._frombuffer, dtype and scalar).
_PROTOCOL5_GLOBALS = ("numpy._core.numeric._frombuffer",)
NNUNET_PROPERTIES_GLOBALS = frozenset(_NUMPY2_GLOBALS + _NUMPY1_ALIASES + _PROTOCOL5_GLOBALS)

_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_MEMO_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_NO_STACK_OPS = {"MEMOIZE", "FRAME", "PROTO", "STOP"} | _MEMO_PUT_OPS
# globals reached through copyreg's extension registry, and persistent ids (resolved by the loader): refused
_REFUSED_OPS = {"EXT1": "copyreg extension code", "EXT2": "copyreg extension code",
                "EXT4": "copyreg extension code", "PERSID": "persistent id", "BINPERSID": "persistent id"}
_UNKNOWN = object()
_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_")


class UnsafePickleError(ValueError):
    """A pickle references code outside the allow-list, or is not a readable pickle. Nothing was loaded."""


def pickle_globals(data: bytes) -> set[str]:
    """Every ``module.name`` global the pickle ``data`` would import, listed without executing it.

    Raises :class:`UnsafePickleError` for a stream that cannot be listed (truncated or malformed), for a
    ``STACK_GLOBAL`` whose module and name are not literal strings (fail closed: such a global cannot be
    checked), and for extension-registry or persistent-id opcodes."""
    found: set[str] = set()
    recent: list = []  # values of the latest pushes; _UNKNOWN for anything that is not a literal string
    memo: dict = {}
    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add(f"{module}.{attr}")
                recent.append(_UNKNOWN)
            elif name == "STACK_GLOBAL":
                module, attr = (recent[-2], recent[-1]) if len(recent) >= 2 else (_UNKNOWN, _UNKNOWN)
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise UnsafePickleError(f"a global at byte {pos} is built from computed values, so it cannot be "
                                            "checked")
                found.add(f"{module}.{attr}")
                recent.append(_UNKNOWN)
            elif name in _REFUSED_OPS:
                raise UnsafePickleError(f"it loads objects through a {_REFUSED_OPS[name]} ({name} at byte {pos})")
            elif name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else _UNKNOWN)
            elif name in _MEMO_GET_OPS:
                recent.append(memo.get(arg, _UNKNOWN))
            elif name in _MEMO_PUT_OPS:
                memo[arg] = recent[-1] if recent else _UNKNOWN
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else _UNKNOWN
            elif name not in _NO_STACK_OPS:
                recent.append(_UNKNOWN)
            del recent[:-2]
    except UnsafePickleError:
        raise
    except Exception as e:  # genops: truncated stream, unknown opcode, bad argument
        raise UnsafePickleError(f"it is not a readable pickle ({type(e).__name__}: {e}); the file is truncated or "
                                "was not written by pickle") from None
    return found


def unsafe_globals(path: str | Path, allowed: Iterable[str] = NNUNET_PROPERTIES_GLOBALS) -> list[str]:
    """The globals of the pickle at ``path`` that are not in ``allowed`` (sorted; empty when it is clean)."""
    return sorted(pickle_globals(Path(path).read_bytes()) - set(allowed))


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in ``allowed`` (``module.name`` strings)."""

    def __init__(self, file, allowed: Iterable[str] = NNUNET_PROPERTIES_GLOBALS, where: str = "pickle"):
        super().__init__(file)
        self.allowed = frozenset(allowed)
        self.where = where

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full not in self.allowed:
            raise UnsafePickleError(f"{self.where} references {full!r}, which is not on the allow-list "
                                    f"{sorted(self.allowed)}; refusing to load it.")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.where} uses a persistent id ({pid!r}); refusing to load it.")


def load_pickle(path: str | Path, allowed: Iterable[str] = NNUNET_PROPERTIES_GLOBALS):
    """Load a pickle NeoNet did not write (e.g. an nnU-Net properties file) under ``allowed``.

    Raises :class:`UnsafePickleError` naming the file for a disallowed global or an unreadable file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated, garbage, wrong format
        raise UnsafePickleError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); it is truncated or "
                                "was not written by pickle.") from None


# ----------------------------------------------------------------------------- nnU-Net's preprocessed data
def _dataset_root(folder: Path) -> Path:
    """``nnUNet_preprocessed/DatasetXXX_Name`` containing ``folder`` (``folder`` itself if it is one)."""
    for p in (folder, *folder.parents):
        if _DATASET_FOLDER.match(p.name):
            return p
    return folder


def verify_preprocessed_folder(folder: str | Path, allowed: Iterable[str] = NNUNET_PROPERTIES_GLOBALS) -> int:
    """Check every ``.pkl`` under ``folder`` (a dataset's ``nnUNet_preprocessed/DatasetXXX_Name`` folder or one
    of its ``<data_identifier>`` data folders) before anything unpickles one; returns the number of files.

    Raises :class:`UnsafePickleError` naming each refused file, what it references and the fix: delete the
    data folder and rerun ``neonet_plan_and_preprocess``, which regenerates it from ``nnUNet_raw``."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    allowed = frozenset(allowed)
    t0 = time.perf_counter()
    files = sorted(folder.rglob("*.pkl"))
    refused: list[tuple[Path, str]] = []
    for f in files:
        try:
            bad = sorted(pickle_globals(f.read_bytes()) - allowed)
        except UnsafePickleError as e:
            refused.append((f, str(e)))
            continue
        except OSError as e:
            refused.append((f, f"it cannot be read ({e.strerror or e})"))
            continue
        if bad:
            refused.append((f, f"it references {bad}, which nnU-Net never writes into a properties file "
                               f"(allowed: {sorted(allowed)})"))
    logger.debug("verified %d pickle(s) in %s in %.3f s", len(files), folder, time.perf_counter() - t0)
    if not refused:
        return len(files)
    root = _dataset_root(folder)
    dataset = root.name
    data_folders = sorted({(root / f.relative_to(root).parts[0]) if f.parent != root else f for f, _ in refused})
    shown = "\n".join(f"  - {f}: {why}" for f, why in refused[:10])
    more = f"\n  ... and {len(refused) - 10} more" if len(refused) > 10 else ""
    raise UnsafePickleError(
        f"Refusing the preprocessed data of {root.name}: {len(refused)} of {len(files)} properties file(s) could "
        f"run code when loaded (nnU-Net unpickles them), or are unreadable; nothing was loaded.\n{shown}{more}\n"
        f"Fix: delete {', '.join(str(d) for d in data_folders)} and rerun `neonet_plan_and_preprocess -d "
        f"{dataset}`, which regenerates the preprocessed data from nnUNet_raw.")
