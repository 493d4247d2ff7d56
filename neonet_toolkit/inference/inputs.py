"""Finding the cases to predict: nnU-Net-named images and DICOM series, and sharding them.

Accepted input folders:

* nnU-Net naming: ``CASE_0000.nii.gz`` (one file per channel, ``_0000``, ``_0001``, ... and the
  model's file ending). For a NIfTI model, ``.nii`` and ``.nii.gz`` are both read (nnU-Net's readers
  read either; the mask is written with the model's ending). A case file in another image format
  (``CASE_0000.nrrd`` for a ``.nii.gz`` model) becomes a failed case that says how to convert it.
* DICOM: the folder itself is one series, and/or each sub-folder (any depth) holds one or more
  series. A series becomes case ``<folder name>`` (``<folder name>_<k>`` when a folder holds
  several series) and is converted once to NIfTI in the work folder (again when its files change).
* Both in one folder: the NIfTI cases and the DICOM series are all predicted.

Nothing is dropped silently: :func:`scan_inputs` lists every file or folder it does not use, with the
reason (hidden entries, non-image files, folders without a DICOM series). Case ids are unique: two
sources that give the same id (``pat_1`` and ``pat 1``; ids differing only in letter case) stop the batch
before any work, naming both.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import (
    dicom_orphans_problem,
    file_problem,
    looks_like_dicom,
    metre_spacing_problem,
    nonfinite_problem,
    unreadable_dicom_files,
    verify_dicom_slices,
)
from neonet_toolkit.utilities.checkpoints import file_sha256
from neonet_toolkit.utilities.io import atomic_path, save_json

logger = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
NIFTI_ENDINGS = (".nii.gz", ".nii")
#: image formats SimpleITK reads (nnU-Net's image readers cover a subset): a case file in one of these
#: that is not the model's format is reported, never skipped
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".tif", ".tiff",
                 ".img", ".hdr")


@dataclass
class InputCase:
    case_id: str
    files: list[Path]
    source: str = "nnunet"  # or "dicom"
    dicom_folder: Path | None = None
    extra: dict = field(default_factory=dict)  # DICOM: series_instance_uid, source_files (the series' files)
    error: str | None = None  # why this case cannot be predicted (the others still are)


@dataclass
class InputScan:
    """What :func:`scan_inputs` found: the cases, and every file or folder it did not use."""

    cases: list[InputCase]
    unused: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the input folder, reason)

    def unused_dict(self) -> dict[str, str]:
        """``{path: reason}`` (for predictions.json)."""
        return dict(self.unused)


def _ending(name: str, endings, ignore_case: bool = False) -> str | None:
    """The longest of ``endings`` that ``name`` ends with, else ``None``; the ending as written in ``name``."""
    low = name.lower() if ignore_case else name
    e = next((e for e in sorted(endings, key=len, reverse=True) if low.endswith(e)), None)
    return name[-len(e):] if e else None


def _accepted_endings(file_ending: str) -> tuple[str, ...]:
    return NIFTI_ENDINGS if file_ending.lower() in NIFTI_ENDINGS else (file_ending,)


def _visible_dirs(folder: Path) -> list[Path]:
    """``folder`` and every sub-folder below it whose path holds no hidden (``.``) component."""
    out = [folder]
    for root, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / d for d in dirs]
    return out


def _dicom_series(folder: Path) -> list[tuple[Path, str | None, str | None, list[Path]]]:
    """``(folder, series id, problem, files)`` for every DICOM series in ``folder`` and its visible sub-folders.
    A folder whose DICOM files cannot all be read gets ``problem`` (for each of its series, or once with series
    id ``None`` when no series is left), so that a patient never silently drops out of the batch or loses a
    slice; ``files`` are the series' files (and the unreadable ones)."""
    import SimpleITK as sitk

    out = []
    for d in _visible_dirs(folder):
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ()
        except RuntimeError:
            ids = ()
        members = {sid: [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid)]
                   for sid in ids}
        orphans = unreadable_dicom_files(d, [f for m in members.values() for f in m])
        problem = dicom_orphans_problem(d, orphans) if orphans else None
        out += ([(d, sid, problem, members[sid] + list(orphans)) for sid in ids]
                or ([(d, None, problem, list(orphans))] if problem else []))
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
    problem = nonfinite_problem(folder, None, sitk.GetArrayViewFromImage(img))
    if problem:  # float pixel data can hold NaN, which the NIfTI round trip would turn into 0
        raise DatasetError(problem)
    with atomic_path(target, suffix=".nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return target


def _source_digest(files: list[Path]) -> dict:
    """What a DICOM conversion was made from: the series files' names and sha256 (a replaced series, even one
    copied with its old names, sizes and times, gives another digest)."""
    return {"files": [[f.name, file_sha256(f)] for f in sorted(files)]}


def _conversion_is_current(target: Path, stamp: Path, digest: dict, case_id: str) -> bool:
    if not target.is_file() or not stamp.is_file() or file_problem(target, case_id) is not None:
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")) == digest
    except (OSError, ValueError):
        return False


def scan_inputs(input_folder: str | Path, file_ending: str = ".nii.gz", n_channels: int = 1,
                work_folder: str | Path | None = None) -> InputScan:
    """All cases in ``input_folder`` (sorted by case id) and every file or folder not used, with the reason.
    Raises :class:`DatasetError` with the fix for problems that concern the whole batch (naming, channels,
    colliding case ids); a problem of one case is its ``error`` (the batch goes on)."""
    folder = Path(input_folder)
    if not folder.is_dir():
        raise DatasetError(f"Input folder {folder} does not exist.")
    accepted = _accepted_endings(file_ending)
    shown = " or ".join(accepted)
    unused: list[tuple[str, str]] = []
    groups: dict[str, dict[int, list[Path]]] = {}
    foreign: dict[str, dict[int, list[Path]]] = {}
    bad, dicom_top = [], False
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            unused.append((p.name, "hidden (name starts with '.'): not read"))
            continue
        if p.is_dir():
            continue  # DICOM series folders are found below; the rest is listed at the end
        end = _ending(p.name, accepted)
        other = None if end else _ending(p.name, IMAGE_ENDINGS, ignore_case=True)
        stem = p.name[: -len(end or other)] if (end or other) else None
        m = _CHANNEL.match(stem) if stem else None
        if end and m:
            groups.setdefault(m["case"], {}).setdefault(int(m["ch"]), []).append(p)
        elif end:
            bad.append(p)
        elif other and m:
            foreign.setdefault(m["case"], {}).setdefault(int(m["ch"]), []).append(p)
        elif looks_like_dicom(p):
            dicom_top = True  # the input folder is (also) a DICOM series
        elif other:
            unused.append((p.name, f"an image ({other}) not named CASE_XXXX{file_ending}; this model reads "
                                   f"CASE_0000{file_ending} files and DICOM series folders"))
        else:
            unused.append((p.name, f"not an input image (expected CASE_XXXX{shown} files or DICOM series folders)"))
    if bad:
        _refuse_bad_names(folder, bad, file_ending)

    problems, cases, used = [], [], set()
    want = list(range(n_channels))
    for cid in sorted(set(groups) | set(foreign)):
        try:
            check_case_id(cid, where=str(folder))
        except DatasetError as e:
            problems.append(str(e))
            continue
        chans = groups.get(cid, {})
        dup = {c: fs for c, fs in chans.items() if len(fs) > 1}
        if dup:
            c, fs = next(iter(dup.items()))
            problems.append(f"case {cid!r}: channel {c:04d} is given by {len(fs)} files {[f.name for f in fs]}; "
                            "keep one of them in the input folder (which one is the scan is not guessed).")
            continue
        other = {c: fs for c, fs in foreign.get(cid, {}).items() if c not in chans}
        for c, fs in foreign.get(cid, {}).items():
            if c in chans:
                unused += [(f.name, f"another copy of case {cid!r} channel {c:04d} ({chans[c][0].name} is used)")
                           for f in fs]
        present = sorted(set(chans) | set(other))
        if present != want:
            problems.append(
                f"case {cid!r}: found channel(s) {present}, the model expects {want} "
                f"({', '.join(f'{cid}_{c:04d}{file_ending}' for c in want)})."
            )
            continue
        files = [chans[c][0] if c in chans else other[c][0] for c in want]
        case = InputCase(cid, files)
        if other:
            conv = ", ".join(f"{fs[0].name} -> {cid}_{c:04d}{file_ending}" for c, fs in sorted(other.items()))
            case.error = (f"case {cid!r}: not in this model's image format ({shown}): convert {conv} (e.g. SimpleITK "
                          "WriteImage(ReadImage(old), new)) and rerun.")
            logger.error(case.error)
        used.update(files)
        cases.append(case)
    if problems:
        raise DatasetError(problems)

    # GDCM scans every folder when there is no NIfTI case (a DICOM file may lack both the .dcm name and the
    # DICM preamble); beside NIfTI cases, the folders below and a top level that holds DICOM files
    scan = dicom_top or not cases or any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    series = _dicom_series(folder) if scan else []
    if series and n_channels != 1:
        raise DatasetError(f"{len(series)} DICOM series in {folder} (e.g. {series[0][0]}): DICOM input gives one "
                           f"channel per case, this model expects {n_channels}. Convert them to CASE_0000"
                           f"{file_ending}, CASE_0001{file_ending}, ... files.")
    planned = _dicom_case_ids(folder, series)
    _refuse_colliding_ids(folder, cases, [(cid, d) for cid, (d, *_) in zip(planned, series)])

    work = Path(work_folder) if work_folder is not None else folder / ".neonet_dicom"
    for (d, sid, problem, members), cid in zip(series, planned):
        used.update(members)
        target = work / f"{cid}_0000.nii.gz"
        error = f"case {cid!r}: {problem}" if problem else None
        extra = {"series_instance_uid": sid, "source_files": sorted(members)}
        if error is None:
            # converted once; converted again when the series' files changed or the conversion is damaged
            stamp = work / f"{cid}_0000.source.json"
            digest = _source_digest(members)
            try:
                if not _conversion_is_current(target, stamp, digest, cid):
                    convert_dicom_series(d, sid, target)
                    save_json(digest, stamp)
            except DatasetError as e:  # one unreadable series never stops the others
                error = f"case {cid!r}: {e}"
        if error:
            logger.error(error)
        cases.append(InputCase(cid, [target], "dicom", d, extra, error=error))
    if series:
        logger.info("Found %d DICOM series in %s", len(series), folder)

    resolved = {f.resolve() for f in used}
    unused = [(n, why) for n, why in unused if (folder / n).resolve() not in resolved]  # read by GDCM after all
    unused += _unused_below(folder, used)
    if not cases:
        found = "; ".join(f"{n} ({why})" for n, why in unused[:5])
        raise DatasetError(
            f"No images found in {folder}: expected files named CASE_0000{file_ending} (nnU-Net naming) or "
            f"DICOM series folders" + (f"; found {found}" if found else " (the folder is empty)") + "."
        )
    _check_readable([c for c in cases if c.source == "nnunet" and c.error is None])
    if unused:
        logger.warning("%d file(s)/folder(s) in %s not used: %s", len(unused), folder,
                       "; ".join(f"{name}: {why}" for name, why in sorted(unused)[:10])
                       + (" ..." if len(unused) > 10 else ""))
    return InputScan(sorted(cases, key=lambda c: c.case_id), sorted(unused))


def discover_inputs(input_folder: str | Path, file_ending: str = ".nii.gz", n_channels: int = 1,
                    work_folder: str | Path | None = None) -> list[InputCase]:
    """All cases in ``input_folder`` (sorted by case id): :func:`scan_inputs` without the list of unused entries
    (which it logs)."""
    return scan_inputs(input_folder, file_ending, n_channels, work_folder).cases


def _refuse_bad_names(folder: Path, bad: list[Path], file_ending: str) -> None:
    first = bad[0].name
    end = _ending(first, _accepted_endings(file_ending))
    suggestion = f"{_sanitize(first[: -len(end)])}_0000{end}"
    fix = (f"rename them, e.g. {first} -> {suggestion}" if not (folder / suggestion).exists() else
           f"{first} is not an input image ({suggestion} already exists: is it a predicted mask or a label?); "
           "move such files out of the input folder")
    raise DatasetError(
        f"{len(bad)} file(s) in {folder} do not follow nnU-Net naming CASE_XXXX{file_ending} "
        f"(e.g. {[p.name for p in bad[:3]]}); {fix}."
    )


def _dicom_case_ids(folder: Path, series) -> list[str]:
    """The case id of each series: its folder's name made safe, ``_<k>`` when the folder holds several."""
    per_folder: dict[Path, int] = {}
    for d, *_ in series:
        per_folder[d] = per_folder.get(d, 0) + 1
    seen: dict[Path, int] = {}
    ids = []
    for d, *_ in series:
        cid = _sanitize(d.name if d != folder else folder.name)
        if per_folder[d] > 1:
            seen[d] = seen.get(d, -1) + 1
            cid = f"{cid}_{seen[d]}"
        ids.append(cid)
    return ids


def _refuse_colliding_ids(folder: Path, cases: list[InputCase], dicom: list[tuple[str, Path]]) -> None:
    """Stop before any work when two inputs give the same case id (also when the ids differ only in letter
    case: their outputs would overwrite each other on a case-insensitive file system). ``dicom``: (id, folder)
    of each DICOM series."""
    sources: dict[str, list[tuple[str, str]]] = {}
    for c in cases:
        sources.setdefault(c.case_id.lower(), []).append((c.case_id, f"file {c.files[0].name}"))
    for cid, d in dicom:
        rel = "." if d == folder else d.relative_to(folder).as_posix()
        sources.setdefault(cid.lower(), []).append((cid, f"DICOM folder {rel!r}"))
    clashes = [v for v in sources.values() if len(v) > 1]
    if clashes:
        raise DatasetError([
            f"case id {v[0][0]!r} would be given to {len(v)} inputs in {folder}: "
            + ", ".join(f"{src} (id {cid!r})" for cid, src in v)
            + "; their results would be confused. Rename one of them so that every case id is unique (an id keeps "
              "letters, digits, '_', '-' and '.' of the name; other characters become '_'), then rerun."
            for v in clashes])


def _unused_below(folder: Path, used: set[Path]) -> list[tuple[str, str]]:
    """Every visible file or folder below ``folder`` (not its top-level files, judged by :func:`scan_inputs`)
    that no case uses: a folder with nothing used inside is listed once, as a whole."""
    used = {p.resolve() for p in used}
    used_dirs = {q for p in used for q in p.parents}
    out = []

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            rel = p.relative_to(folder).as_posix()
            if p.name.startswith("."):
                if d != folder:  # the top level's hidden entries are listed already
                    out.append((rel, "hidden (name starts with '.'): not read"))
            elif p.is_dir():
                if p.resolve() in used_dirs:
                    walk(p)
                else:
                    files = [q for q in p.rglob("*") if q.is_file()]
                    n = len(files)
                    nested = sorted({_ending(q.name, IMAGE_ENDINGS, True) for q in files} - {None})
                    why = f"a folder without a DICOM series ({n} file(s)"
                    why += (f", images {nested} in sub-folders are not read: move CASE_XXXX files to the top level "
                            "of the input folder)" if nested else ")")
                    out.append((rel, why))
            elif d != folder and p.resolve() not in used:
                out.append((rel, "not part of a DICOM series (not a DICOM image file)"))
    walk(folder)
    return out


def _check_readable(cases: list[InputCase]) -> None:
    """Mark each case whose files are unreadable, truncated, not 3D, hold NaN/Inf voxels or have their spacing in
    metres (``case.error``); one bad case never stops the others. The NaN/Inf check is planning's
    (:func:`~neonet_toolkit.dataset.file_checks.nonfinite_problem`): nnU-Net's SimpleITK reader would read them
    as 0 and the models would see a hole in the image."""
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
                    else:
                        problem = metre_spacing_problem(r.GetSpacing(), f, c.case_id)
                except RuntimeError as e:
                    problem = (f"case {c.case_id!r}: {f.name} cannot be read ({str(e).splitlines()[0][:120]}); "
                               "re-export it as NIfTI.")
            if problem is None:
                try:
                    problem = nonfinite_problem(f, c.case_id)
                except Exception as e:  # a reader failing deep inside: the case and the fix, never a traceback
                    problem = (f"case {c.case_id!r}: {f.name} cannot be read in full ({type(e).__name__}: {e}); "
                               "copy it again from its source or re-export it.")
            if problem:
                c.error = problem
                logger.error(problem)
                break


def shard(cases: list[InputCase], num_parts: int = 1, part_id: int = 0) -> list[InputCase]:
    """This part's cases (as nnU-Net's ``-num_parts/-part_id``): every ``num_parts``-th case by id."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in [0, {num_parts - 1}] for --num-parts {num_parts} (got {part_id}).")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]
