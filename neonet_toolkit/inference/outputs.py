"""What ``neonet_predict`` may write, and when a result in the output folder is still valid.

Two rules, both checked for the whole batch before any case is computed:

* **Never overwrite a file NeoNet did not write.** A case's files (``CASE<ending>``, ``cases/CASE.json``,
  ``crops/CASE_*``) are NeoNet's only when the case record lists them with the sha256 they have now; the
  tables are NeoNet's when they carry NeoNet's header (``predictions.csv``) or provenance
  (``predictions.json``). Anything else (ground-truth labels in the output folder, a file edited since)
  stops the batch, naming the file, with or without ``--overwrite``.
* **A result is valid only for what made it.** A case record carries the sha256 of the input bytes, of every
  model file (NeoSeg folds, plans, classifier folds) and of the settings that change an answer. A record made
  from other bytes, another model or other settings is never reported as complete: without ``--overwrite``
  the batch stops and says why; with it, the case is computed again.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.checkpoints import file_sha256
from neonet_toolkit.utilities.io import load_json

CASES_FOLDER = "cases"
CROPS_FOLDER = "crops"
DICOM_FOLDER = "dicom"  # --dicom-out: CASE_seg.dcm, CASE_sr.dcm
CSV_FILE = "predictions.csv"
JSON_FILE = "predictions.json"
TOOLKIT = "neonet_toolkit"
# errors after which no further case can be written: the batch stops (what is complete is kept and listed)
FATAL_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def digest_files(files: Iterable[str | Path]) -> str:
    """sha256 over the bytes of ``files`` in the given order (each file's own sha256, then the list)."""
    h = hashlib.sha256()
    for f in files:
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def digest_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ResultKey:
    """What a case's result depends on: input bytes, model files and settings (all as sha256)."""

    input_sha256: str
    model_sha256: str
    settings_sha256: str

    def to_dict(self) -> dict:
        return {"input_sha256": self.input_sha256, "model_sha256": self.model_sha256,
                "settings_sha256": self.settings_sha256}

    def stale_reason(self, record: dict) -> str | None:
        """Why ``record`` (a case record) is not a result of this key, or None when it is."""
        old = record.get("result_key")
        if not isinstance(old, dict):
            return "its record has no content hashes (written by an older NeoNet)"
        if old.get("input_sha256") != self.input_sha256:
            return "the input image is not the one that result was computed from (other bytes under the same id)"
        if old.get("model_sha256") != self.model_sha256:
            return "it was computed by other models (NeoSeg folds, classifier run or plans differ)"
        if old.get("settings_sha256") != self.settings_sha256:
            return "it was computed with other settings (folds, crops/saliency, postprocessing)"
        return None


def check_output_target(output_folder: str | Path) -> Path:
    """``-o`` must be a folder this process can write into: not a file, not read-only. Creates it."""
    out = Path(output_folder)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"Output folder {out} is a file, not a folder: -o names the folder the masks and "
                           f"predictions.csv go to, e.g. -o {out.parent / (out.stem.split('.')[0] + '_predictions')}.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".neonet_write_check.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DatasetError(f"Output folder {out} cannot be written ({e.strerror or e}): choose a folder you can "
                           "write to with -o, or fix its permissions.") from None
    return out


def case_files(out: Path, case_id: str, file_ending: str) -> list[Path]:
    """Every existing file of one case in the output folder (mask, record, crops)."""
    files = [out / f"{case_id}{file_ending}", out / CASES_FOLDER / f"{case_id}.json"]
    for sub in (CROPS_FOLDER, DICOM_FOLDER):
        if (out / sub).is_dir():
            files += sorted(p for p in (out / sub).iterdir() if p.name.startswith(f"{case_id}_") and p.is_file())
    return [f for f in files if f.is_file()]


def load_record(out: Path, case_id: str) -> dict | None:
    """The NeoNet case record of ``case_id`` in ``out``, or None (missing, unreadable, or not NeoNet's: a
    NeoNet record is a JSON object with this ``case_id`` and a ``qc_flags`` list)."""
    f = out / CASES_FOLDER / f"{case_id}.json"
    if not f.is_file():
        return None
    try:
        rec = load_json(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(rec, dict) and rec.get("case_id") == case_id and isinstance(rec.get("qc_flags"), list)
    return rec if ok else None


def foreign_files(out: Path, case_id: str, file_ending: str, record: dict | None) -> list[str]:
    """Files of ``case_id`` in ``out`` that NeoNet did not write, or that changed since it wrote them.

    ``record`` is :func:`load_record`'s answer. A record of an older NeoNet (no ``outputs``) vouches for its
    files: whether its result is still valid is :meth:`ResultKey.stale_reason`'s question."""
    rec_rel = f"{CASES_FOLDER}/{case_id}.json"
    bad = []
    for f in case_files(out, case_id, file_ending):
        rel = f.relative_to(out).as_posix()
        if record is None:
            bad.append(f"{rel} (" + ("not a NeoNet case record)" if rel == rec_rel else
                                     "no NeoNet case record lists it)"))
        elif rel != rec_rel and "outputs" in record:
            if rel not in record["outputs"]:
                bad.append(f"{rel} (no NeoNet case record lists it)")
            elif record["outputs"][rel] is not None and file_sha256(f) != record["outputs"][rel]:
                bad.append(f"{rel} (changed since NeoNet wrote it)")
    return bad


def foreign_tables(out: Path, csv_fields: Sequence[str]) -> list[str]:
    """predictions.csv / predictions.json that exist in ``out`` and are not NeoNet's."""
    bad = []
    f = out / CSV_FILE
    if f.is_file():
        try:
            with open(f, encoding="utf-8") as fh:
                header = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            header = None
        if header != ",".join(csv_fields):
            bad.append(f"{CSV_FILE} (its header is not NeoNet's)")
    f = out / JSON_FILE
    if f.is_file():
        try:
            prov = load_json(f).get("provenance")
            ok = isinstance(prov, dict) and prov.get("toolkit") in (TOOLKIT, None) and "cases" in load_json(f)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            bad.append(f"{JSON_FILE} (not a NeoNet predictions file)")
    return bad


def refuse_foreign(out: Path, problems: dict[str, list[str]]) -> None:
    """Stop the batch when ``problems`` ({case id or '': [file (reason)]}) is not empty."""
    if not problems:
        return
    listed = [f"{out / p.split(' (')[0]} ({p.split(' (', 1)[1]}" for ps in problems.values() for p in ps]
    raise DatasetError(
        f"Output folder {out} holds {len(listed)} file(s) that NeoNet did not write and would overwrite: "
        f"{listed[:6]}{' ...' if len(listed) > 6 else ''}. Nothing was written. Is -o pointing at a labels or "
        "results folder? Choose an empty or NeoNet output folder, or move those files away "
        "(--overwrite never replaces files NeoNet did not write).")


def refuse_stale(out: Path, stale: dict[str, str]) -> None:
    if not stale:
        return
    items = [f"{c}: {r}" for c, r in sorted(stale.items())]
    raise DatasetError(
        f"Output folder {out} holds results of {len(stale)} case(s) that this run would not reproduce: "
        f"{items[:5]}{' ...' if len(items) > 5 else ''}. Nothing was written. Rerun with --overwrite to compute "
        "them again with these inputs, models and settings, or choose another output folder.")


CROP_SUFFIXES = ("crop_0000.nii.gz", "crop_0001.nii.gz", "crop_mask.nii.gz", "saliency.nii.gz", "crop.png")


def pending_record(case_id: str, file_ending: str, key: ResultKey) -> dict:
    """The record written before a case's files: it claims them (hash ``None`` = being written), so that a run
    that dies half-way leaves files the next run recognises as NeoNet's and computes again."""
    names = [f"{case_id}{file_ending}", *(f"{CROPS_FOLDER}/{case_id}_{s}" for s in CROP_SUFFIXES)]
    return {"case_id": case_id, "status": "pending", "qc_flags": [], "probability": None, "decision": None,
            "result_key": key.to_dict(), "outputs": {n: None for n in names}}


def refuse_orphans(out: Path, orphans: list[str]) -> None:
    """Records of cases that are not in this input and were computed by other models or settings."""
    if orphans:
        raise DatasetError(
            f"Output folder {out} holds results of {len(orphans)} case(s) that are not in this input and were "
            f"computed by other models: {orphans[:5]}{' ...' if len(orphans) > 5 else ''}. "
            "predictions.csv would list them under this run's provenance. Nothing was written. Use another output "
            "folder, or move those cases' files (cases/CASE.json, the mask, crops/CASE_*) away.")


def outputs_of(out: Path, case_id: str, file_ending: str) -> dict[str, str]:
    """``{relative path: sha256}`` of the case's files written so far (the record itself excluded)."""
    rec = f"{CASES_FOLDER}/{case_id}.json"
    return {f.relative_to(out).as_posix(): file_sha256(f) for f in case_files(out, case_id, file_ending)
            if f.relative_to(out).as_posix() != rec}


def is_fatal_write_error(e: BaseException) -> bool:
    """A write error after which no other case can be written either (disk full, read-only, permission)."""
    return isinstance(e, OSError) and e.errno in FATAL_WRITE_ERRNOS
