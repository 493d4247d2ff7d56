"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and an interrupted run leaves either the old file
or nothing (plus a stray ``.tmp`` that the next run overwrites).
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    current = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(current)
    return current


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results get the mode any new file would get
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def move_aside(folder: str | os.PathLike, prefix: str = "") -> Path:
    """Rename ``folder`` to ``<prefix><name>.replaced-<timestamp>`` next to it (``--overwrite``: the previous
    results are kept, never half-replaced, and no stale file stays where the new run writes).

    ``prefix`` keeps the new name out of a tool's folder pattern: nnU-Net takes every ``fold_*`` folder
    of a model for a fold (``int("0.replaced-…")`` fails), so nnU-Net folds are moved with ``"old-"``."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{prefix}{folder.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = folder.with_name(f"{prefix}{folder.name}.replaced-{stamp}-{n}")
        n += 1
    os.replace(folder, target)
    return target


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def save_json(obj: Any, target: str | os.PathLike, indent: int = 2, sort_keys: bool = False) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=_json_default)
            f.write("\n")


def load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_npz(target: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def save_text(text: str, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def save_csv(rows: list[dict], target: str | os.PathLike, fields: list[str] | None = None,
             float_format: str | None = None) -> Path:
    """Write dict rows as CSV atomically (the one CSV writer). ``fields`` default: every key, in first-seen
    order; keys not in ``fields`` are ignored; lists are joined with ";"; floats use ``float_format``."""
    fields = list(fields) if fields is not None else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (";".join(map(str, v)) if isinstance(v, list) else
                        (format(v, float_format) if float_format and isinstance(v, float) else v))
                    for k, v in r.items() if k in fields})
    save_text(buf.getvalue(), target)
    return Path(target)


def save_figure(fig, target: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically (and release it if pyplot manages it).

    Library code builds figures with ``matplotlib.figure.Figure`` (no pyplot state, no backend switch);
    a pyplot figure is closed here so that long runs do not accumulate open figures."""
    target = Path(target)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return target
