"""The NeoNet dataset contract.

A NeoNet dataset is a plain nnU-Net v2 raw dataset plus one CSV of case labels::

    nnUNet_raw/Dataset501_Name/
        dataset.json            # nnU-Net keys + optional "neonet" key (see below)
        imagesTr/CASE_0000.nii.gz
        labelsTr/CASE.nii.gz
        imagesTs/...            # optional
        case_labels.csv         # header "case_id,<TARGET>", values 0/1, one row per training case

Label *roles* are resolved by name from ``dataset.json["labels"]``, never by integer id. The
defaults are organ = ``liver`` and tumour = ``tumor``; an optional key overrides them::

    "neonet": {"target": "PNI", "organ_labels": ["liver"], "tumor_labels": ["tumor"],
               "image_channel": 0, "crop_size": [96, 96, 48]}

(``crop_size`` is given in x, y, z order like the paper's 96x96x48.) Any further labels
(vessels, ducts, ...) are carried along and ignored by TLCR.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import LabelRoles, resolve_label_roles

logger = logging.getLogger(__name__)

CASE_LABELS_FILE = "case_labels.csv"
DEFAULT_TARGET = "PNI"



def read_case_labels(csv_path: str | Path, target: str) -> dict[str, int]:
    """Read ``case_id,<target>`` rows. Raises :class:`DatasetError` on any malformed row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(
            f"Missing case-label file {csv_path}. Create it with the header 'case_id,{target}' and one row "
            "per training case with 0 or 1."
        )
    text = _read_utf8(csv_path)
    problems: list[str] = []
    labels: dict[str, int] = {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "case_id" not in header or target not in header:
        hint = (" The file seems to use ';' as separator: save it with ',' (e.g. Excel 'CSV UTF-8 (comma "
                "delimited)')." if len(header) == 1 and ";" in header[0] else "")
        raise DatasetError(
            f"{csv_path}: header is {header}, expected 'case_id,{target}'. Rename the columns or set "
            f"\"neonet\": {{\"target\": \"<column>\"}} in dataset.json.{hint}"
        )
    extra_lines: list[int] = []
    for row in reader:
        extra = row.pop(None, None)  # fields beyond the header (csv puts them under the key None)
        if extra is not None:
            extra_lines.append(reader.line_num)
            if len(extra_lines) == 1:
                first_extra = extra
            continue
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        cid, raw = row.get("case_id", ""), row.get(target, "")
        lineno = reader.line_num
        if not cid:
            problems.append(f"{csv_path.name} line {lineno}: empty case_id; remove the line or fill it in.")
            continue
        try:
            check_case_id(cid, where=f"{csv_path.name} line {lineno}")
        except DatasetError as e:
            problems.append(str(e))
            continue
        if cid in labels:
            problems.append(
                f"{csv_path.name} line {lineno}: case {cid!r} is listed twice; keep one row per case."
            )
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if value not in (0.0, 1.0):
            problems.append(
                f"{csv_path.name} line {lineno}: case {cid!r} has {target}={raw!r}; the target must be 0 or 1."
            )
            continue
        labels[cid] = int(value)
    if extra_lines:
        problems.insert(0, (
            f"{csv_path}: {len(extra_lines)} line(s) have more fields than the header {header} (line(s) "
            f"{extra_lines[:10]}{' ...' if len(extra_lines) > 10 else ''}; e.g. extra {first_extra!r}: a trailing "
            "comma?). Remove the trailing comma(s) from those lines, or name the extra column in the header."))
    if problems:
        raise DatasetError(problems)
    return labels


def _read_utf8(path: Path) -> str:
    """A text file's content as UTF-8 (a leading BOM is dropped); :class:`DatasetError` naming the file, the first
    offending line and the fix otherwise (an encoding is never guessed: case ids and values must read the same
    on every machine)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}; Latin-1/Windows-1252 or "
            "UTF-16?). Save it as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8 FILE > NEW`)."
        ) from None


#: nnU-Net v2's required dataset.json keys (``verify_dataset_integrity``), each with an example for the fix.
REQUIRED_DATASET_JSON_KEYS = {
    "channel_names": '"channel_names": {"0": "T2"}',
    "labels": '"labels": {"background": 0, "liver": 1, "tumor": 2}',
    "numTraining": '"numTraining": <number of training cases>',
    "file_ending": '"file_ending": ".nii.gz"',
}


def check_dataset_json(dataset_json, where: str | Path) -> dict:
    """Return ``dataset_json`` if it has nnU-Net v2's required keys with usable values, else raise
    :class:`DatasetError` naming ``where`` (the file), every problem and the fix."""
    if not isinstance(dataset_json, dict):
        raise DatasetError(f"{where}: dataset.json must be a JSON object ({{...}}), got {type(dataset_json).__name__}.")
    problems = []
    missing = [k for k in REQUIRED_DATASET_JSON_KEYS if k not in dataset_json]
    if missing:
        problems.append(f"{where} lacks the required nnU-Net key(s) {missing}; add "
                        + ", ".join(REQUIRED_DATASET_JSON_KEYS[k] for k in missing) + ".")
    ch = dataset_json.get("channel_names")
    if "channel_names" in dataset_json and (not isinstance(ch, dict) or not ch):
        problems.append(f"{where}: 'channel_names' must be a non-empty object, e.g. "
                        f"{REQUIRED_DATASET_JSON_KEYS['channel_names']}; got {ch!r}.")
    lab = dataset_json.get("labels")
    if "labels" in dataset_json:
        if not isinstance(lab, dict) or not lab:
            problems.append(f"{where}: 'labels' must be an object of label names to ids, e.g. "
                            f"{REQUIRED_DATASET_JSON_KEYS['labels']}; got {lab!r}.")
        elif lab.get("background") != 0:
            problems.append(f"{where}: 'labels' must declare \"background\": 0 (nnU-Net's rule); got {lab!r}.")
    n = dataset_json.get("numTraining")
    if "numTraining" in dataset_json and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        problems.append(f"{where}: 'numTraining' must be a positive integer (the number of training cases); "
                        f"got {n!r}.")
    fe = dataset_json.get("file_ending")
    if "file_ending" in dataset_json and (not isinstance(fe, str) or not fe.startswith(".")):
        problems.append(f"{where}: 'file_ending' must be a string like \".nii.gz\"; got {fe!r}.")
    if problems:
        raise DatasetError(problems)
    return dataset_json


def load_dataset_json(path: str | Path) -> dict:
    """Read and check a dataset.json (a raw dataset's, a preprocessed folder's or a model folder's):
    :class:`DatasetError` naming the file and the fix when it is missing, not JSON, or lacks a required key."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist. Point -d at an nnU-Net v2 raw dataset "
                           "(nnUNet_raw/DatasetXXX_Name) or a complete model folder.")
    try:
        dataset_json = json.loads(_read_utf8(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the "
                           "syntax (e.g. check it with `python -m json.tool FILE`).") from None
    return check_dataset_json(dataset_json, path)


@dataclass
class NeoNetDataset:
    """A raw nnU-Net dataset folder checked against the NeoNet contract."""

    name: str
    folder: Path
    dataset_json: dict
    roles: LabelRoles
    target: str
    case_labels: dict[str, int]
    cases: dict[str, dict]  # nnU-Net's {case: {"images": [...], "label": ...}}
    image_channel: int = 0
    options: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> "NeoNetDataset":
        folder = Path(folder)
        if not (folder / "dataset.json").is_file():
            raise DatasetError(
                f"{folder} has no dataset.json. Point -d at an nnU-Net v2 raw dataset (nnUNet_raw/DatasetXXX_Name)."
            )
        dataset_json = load_dataset_json(folder / "dataset.json")
        name = folder.name
        opts = dict(dataset_json.get("neonet", {}) or {})
        target = str(opts.get("target", DEFAULT_TARGET))
        roles = resolve_label_roles(dataset_json, name)
        channel = int(opts.get("image_channel", 0))
        if channel >= len(dataset_json["channel_names"]):
            raise DatasetError(
                f"{name}: neonet.image_channel={channel} but dataset.json has only "
                f"{len(dataset_json['channel_names'])} channel(s)."
            )
        cases = _list_training_cases(folder, dataset_json)
        if dataset_json["numTraining"] != len(cases):
            raise DatasetError(
                f"{folder / 'dataset.json'}: numTraining is {dataset_json['numTraining']} but imagesTr holds "
                f"{len(cases)} case(s); set \"numTraining\": {len(cases)} (nnU-Net plans with it)."
            )
        case_labels = read_case_labels(folder / CASE_LABELS_FILE, target)
        ds = cls(name, folder, dataset_json, roles, target, case_labels, cases, channel, opts)
        ds.check_case_labels()
        return ds

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.cases)

    def check_case_labels(self) -> None:
        problems = []
        for cid in self.case_ids:
            try:
                check_case_id(cid, where="imagesTr")
            except DatasetError as e:
                problems.append(str(e))
        missing = sorted(set(self.cases) - set(self.case_labels))
        extra = sorted(set(self.case_labels) - set(self.cases))
        for cid in missing:
            problems.append(
                f"case {cid!r} is in imagesTr but has no row in {CASE_LABELS_FILE}; add 'case_id,{self.target}' "
                f"row '{cid},<0|1>'."
            )
        for cid in extra:
            problems.append(
                f"case {cid!r} is in {CASE_LABELS_FILE} but has no image in imagesTr; remove the row or add the "
                "image and label."
            )
        if problems:
            raise DatasetError(problems)
        counts = np.bincount([self.case_labels[c] for c in self.case_ids], minlength=2)
        if counts.min() == 0:
            raise DatasetError(
                f"{self.name}: all {len(self.cases)} cases have {self.target}={int(np.argmax(counts))}; a classifier "
                "needs both classes."
            )

    def image_file(self, case_id: str) -> Path:
        return Path(self.cases[case_id]["images"][self.image_channel])

    def label_file(self, case_id: str) -> Path:
        return Path(self.cases[case_id]["label"])

    @property
    def crop_size_xyz(self) -> tuple[int, int, int] | None:
        cs = self.options.get("crop_size")
        if cs is None:
            return None
        if len(cs) != 3 or any(int(c) < 1 for c in cs):
            raise DatasetError(f"{self.name}: neonet.crop_size must be three positive integers (x, y, z), got {cs}.")
        return tuple(int(c) for c in cs)

    def class_counts(self) -> dict[int, int]:
        vals = [self.case_labels[c] for c in self.case_ids]
        return {0: vals.count(0), 1: vals.count(1)}


def _list_training_cases(folder: Path, dataset_json: dict) -> dict[str, dict]:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if "dataset" not in dataset_json and not (folder / "imagesTr").is_dir():
        raise DatasetError(f"{folder.name}: no imagesTr folder.")
    cases = {str(k): v for k, v in get_filenames_of_train_images_and_targets(str(folder), dict(dataset_json)).items()}
    if not cases:
        raise DatasetError(
            f"{folder.name}: no training images found in imagesTr with file ending "
            f"{dataset_json['file_ending']!r}. Images must be named CASE_0000{dataset_json['file_ending']}."
        )
    n_channels = len(dataset_json["channel_names"])
    problems = []
    for cid, entry in sorted(cases.items()):
        if len(entry["images"]) != n_channels:
            problems.append(
                f"case {cid!r}: found {len(entry['images'])} channel file(s), dataset.json declares {n_channels}; "
                f"name them {cid}_0000{dataset_json['file_ending']}, {cid}_0001..."
            )
        if not Path(entry["label"]).is_file():
            problems.append(f"case {cid!r}: label {entry['label']} is missing; add it to labelsTr.")
    if problems:
        raise DatasetError(problems)
    return cases


