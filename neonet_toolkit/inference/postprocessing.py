"""Decisions and checks around a prediction: the default classifier run, the fold-ensemble decision, and
the output-folder check."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.identifiers import cls_run_name


def default_cls_run(runs: list[str]) -> str | None:
    """The run ``neonet_predict`` uses without ``--cls-run``: the only trained run, else the paper's
    PattenNet R+S (1:1) under the default nested protocol, else under the paper's protocol; else none."""
    if len(runs) == 1:
        return runs[0]
    for preferred in (cls_run_name("pattennet", 1.0, early_stopping="nested"), cls_run_name("pattennet", 1.0)):
        if preferred in runs:
            return preferred
    return None


def ensemble_decision(probs: Sequence[float], thresholds: Sequence[float]) -> tuple[float, int, float]:
    """(mean probability, decision, mean threshold): the majority of the per-fold decisions, each fold's
    calibrated probability against its own threshold; a tie goes to mean probability >= mean threshold."""
    p, t = float(np.mean(probs)), float(np.mean(thresholds))
    votes = sum(int(q >= th) for q, th in zip(probs, thresholds))
    n = len(probs)
    decision = int(votes * 2 > n) if votes * 2 != n else int(p >= t)
    return p, decision, t


def check_output_folder(input_folder: str | Path, output_folder: str | Path) -> None:
    """Refuse an output folder equal to, inside, or containing the input folder (masks named CASE.nii.gz
    would mix with the input scans, and a later run would read them as inputs)."""
    inp, out = Path(input_folder).resolve(), Path(output_folder).resolve()
    if out == inp or inp in out.parents or out in inp.parents:
        rel = "is" if out == inp else ("is inside" if inp in out.parents else "contains")
        raise DatasetError(f"Output folder {output_folder} {rel} the input folder {input_folder}: predicted masks "
                           f"would be mixed with the input scans. Choose a separate folder, e.g. "
                           f"{inp.parent / (inp.name + '_neonet_predictions')}.")
