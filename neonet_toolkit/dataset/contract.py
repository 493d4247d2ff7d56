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
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import LabelRoles, resolve_label_roles
from neonet_toolkit.utilities.io import load_json

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
    problems: list[str] = []
    labels: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "case_id" not in header or target not in header:
            raise DatasetError(
                f"{csv_path}: header is {header}, expected 'case_id,{target}'. Rename the columns or set "
                f"\"neonet\": {{\"target\": \"<column>\"}} in dataset.json."
            )
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            cid, raw = row.get("case_id", ""), row.get(target, "")
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
    if problems:
        raise DatasetError(problems)
    return labels


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
        dataset_json = load_json(folder / "dataset.json")
        name = folder.name
        missing = [k for k in ("channel_names", "labels", "file_ending") if k not in dataset_json]
        if missing:
            raise DatasetError(f"{name}: dataset.json lacks required nnU-Net key(s) {missing}.")
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


