"""Finding the cases to predict: nnU-Net-named images or DICOM series, and sharding them.

Accepted input folders:

* nnU-Net naming: ``CASE_0000.nii.gz`` (one file per channel, ``_0000``, ``_0001``, ... and the
  model's file ending);
* DICOM: the folder itself is one series, or each sub-folder (any depth) holds one or more
  series. A series becomes case ``<folder name>`` (``<folder name>_<k>`` when a folder holds
  several series) and is converted once to NIfTI in the work folder.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import (
    dicom_orphans_problem,
    file_problem,
    unreadable_dicom_files,
    verify_dicom_slices,
)
from neonet_toolkit.utilities.io import atomic_path

logger = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class InputCase:
    case_id: str
    files: list[Path]
    source: str = "nnunet"  # or "dicom"
    dicom_folder: Path | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None  # why this case cannot be predicted (the others still are)


def _strip_ending(name: str, file_ending: str) -> str | None:
    return name[: -len(file_ending)] if name.endswith(file_ending) else None


def _dicom_series(folder: Path) -> list[tuple[Path, str | None, str | None]]:
    """``(folder, series id, problem)`` for every DICOM series below ``folder``. A folder whose DICOM files
    cannot all be read gets ``problem`` (for each of its series, or once with series id ``None`` when no
    series is left), so that a patient never silently drops out of the batch or loses a slice."""
    import SimpleITK as sitk

    out = []
    for d in sorted([folder] + [p for p in folder.rglob("*") if p.is_dir()]):
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ()
        except RuntimeError:
            ids = ()
        members = [f for sid in ids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid)]
        orphans = unreadable_dicom_files(d, members)
        problem = dicom_orphans_problem(d, orphans) if orphans else None
        out += [(d, sid, problem) for sid in ids] or ([(d, None, problem)] if problem else [])
    return out


def _sanitize(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._-")
    return s or "case"


def convert_dicom_series(folder: Path, series_id: str, target: Path) -> Path:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames(names)
    if len(names) > 1:  # ITK would stack the slices left with a warning only
        verify_dicom_slices(names, f"DICOM series {series_id} in {folder}")
    try:
        # one file = a multi-frame (enhanced) DICOM: its frames are the slices, read it as one image
        # (the series reader would stack it into a 4D image of one "slice")
        img = sitk.ReadImage(names[0]) if len(names) == 1 else reader.Execute()
    except RuntimeError as e:
        raise DatasetError(f"DICOM series {series_id} in {folder} cannot be read ({str(e).splitlines()[0][:200]}); "
                           "check that the folder holds one complete series.") from None
    if img.GetDimension() != 3 or min(img.GetSize()) < 2:
        raise DatasetError(f"DICOM series {series_id} in {folder} is not a 3D volume (size {img.GetSize()}).")
    with atomic_path(target, suffix=".nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return target


def discover_inputs(input_folder: str | Path, file_ending: str = ".nii.gz", n_channels: int = 1,
                    work_folder: str | Path | None = None) -> list[InputCase]:
    """All cases in ``input_folder`` (sorted by case id). Raises :class:`DatasetError` with the fix."""
    folder = Path(input_folder)
    if not folder.is_dir():
        raise DatasetError(f"Input folder {folder} does not exist.")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(file_ending))
    if images:
        groups: dict[str, dict[int, Path]] = {}
        bad = []
        for p in images:
            m = _CHANNEL.match(_strip_ending(p.name, file_ending))
            if not m:
                bad.append(p.name)
                continue
            groups.setdefault(m["case"], {})[int(m["ch"])] = p
        if bad:
            suggestion = f"{_sanitize(_strip_ending(bad[0], file_ending))}_0000{file_ending}"
            fix = (f"rename them, e.g. {bad[0]} -> {suggestion}" if not (folder / suggestion).exists() else
                   f"{bad[0]} is not an input image ({suggestion} already exists: is it a predicted mask or a label?); "
                   "move such files out of the input folder")
            raise DatasetError(
                f"{len(bad)} file(s) in {folder} do not follow nnU-Net naming CASE_XXXX{file_ending} "
                f"(e.g. {bad[:3]}); {fix}."
            )
        cases = []
        problems = []
        for cid in sorted(groups):
            try:
                check_case_id(cid, where=str(folder))
            except DatasetError as e:
                problems.append(str(e))
                continue
            chans = groups[cid]
            want = list(range(n_channels))
            if sorted(chans) != want:
                problems.append(
                    f"case {cid!r}: found channel(s) {sorted(chans)}, the model expects {want} "
                    f"({', '.join(f'{cid}_{c:04d}{file_ending}' for c in want)})."
                )
                continue
            cases.append(InputCase(cid, [chans[c] for c in want]))
        if problems:
            raise DatasetError(problems)
        _check_readable(cases)
        return cases
    series = _dicom_series(folder)
    if not series:
        others = sorted(p.name for p in folder.iterdir())[:5]
        raise DatasetError(
            f"No images found in {folder}: expected files named CASE_0000{file_ending} (nnU-Net naming) or "
            f"DICOM series folders" + (f"; found e.g. {others}" if others else " (the folder is empty)") + "."
        )
    if n_channels != 1:
        raise DatasetError(f"DICOM input gives one channel per case; this model expects {n_channels}.")
    work = Path(work_folder) if work_folder is not None else folder / ".neonet_dicom"
    per_folder: dict[Path, int] = {}
    for d, _, _ in series:
        per_folder[d] = per_folder.get(d, 0) + 1
    cases, seen = [], {}
    for d, sid, problem in series:
        base = _sanitize(d.name if d != folder else folder.name)
        cid = base
        if per_folder[d] > 1:
            seen[d] = seen.get(d, -1) + 1
            cid = f"{base}_{seen[d]}"
        while any(c.case_id == cid for c in cases):
            cid += "_dup"
        target = work / f"{cid}_0000.nii.gz"
        error = f"case {cid!r}: {problem}" if problem else None
        # converted once; a cached conversion that is no longer intact is converted again from the series
        if error is None and (not target.is_file() or file_problem(target, cid) is not None):
            try:
                convert_dicom_series(d, sid, target)
            except DatasetError as e:  # one unreadable series never stops the others
                error = f"case {cid!r}: {e}"
        if error:
            logger.error(error)
        cases.append(InputCase(cid, [target], "dicom", d, {"series_instance_uid": sid}, error=error))
    logger.info("Found %d DICOM series in %s", len(cases), folder)
    return sorted(cases, key=lambda c: c.case_id)


def _check_readable(cases: list[InputCase]) -> None:
    """Mark each case whose files are unreadable, truncated or not 3D (``case.error``); one bad case never
    stops the others."""
    import SimpleITK as sitk

    for c in cases:
        for f in c.files:
            problem = file_problem(f, c.case_id)
            if problem is None:
                r = sitk.ImageFileReader()
                r.SetFileName(str(f))
                try:
                    r.ReadImageInformation()
                    if r.GetDimension() != 3:
                        problem = (f"case {c.case_id!r}: {f.name} is {r.GetDimension()}D (size {r.GetSize()}); "
                                   "NeoNet needs one 3D volume per file: split channels into CASE_0000, "
                                   "CASE_0001, ... files.")
                except RuntimeError as e:
                    problem = (f"case {c.case_id!r}: {f.name} cannot be read ({str(e).splitlines()[0][:120]}); "
                               "re-export it as NIfTI.")
            if problem:
                c.error = problem
                logger.error(problem)
                break


def shard(cases: list[InputCase], num_parts: int = 1, part_id: int = 0) -> list[InputCase]:
    """This part's cases (as nnU-Net's ``-num_parts/-part_id``): every ``num_parts``-th case by id."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in [0, {num_parts - 1}] for --num-parts {num_parts} (got {part_id}).")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]
