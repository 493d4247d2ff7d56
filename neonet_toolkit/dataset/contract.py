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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import file_problem
from neonet_toolkit.utilities.io import load_json

logger = logging.getLogger(__name__)

CASE_LABELS_FILE = "case_labels.csv"
DEFAULT_TARGET = "PNI"
DEFAULT_ORGAN_LABELS = ("liver",)
DEFAULT_TUMOR_LABELS = ("tumor",)
_TUMOR_ALIASES = ("tumour",)
_SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")



def check_case_id(case_id: str, where: str = "") -> str:
    """Return ``case_id`` if it is a safe file-name stem, else raise :class:`DatasetError`.

    Case ids become file names (``imagesTr/<id>_0000.nii.gz``, ``<id>.npz``). An id with a path
    separator, ``..``, or a leading dot could escape the dataset folder, so it is refused.
    """
    cid = str(case_id)
    if not _SAFE_CASE_ID.match(cid) or ".." in cid:
        raise DatasetError(
            f"Case id {cid!r}{' in ' + where if where else ''} is not a safe file name: case ids may "
            "only contain letters, digits, '_', '-' and '.', must start with a letter or digit and must not "
            "contain '..' or path separators. Rename the case (image, label and CSV row)."
        )
    return cid


def safe_join(folder: str | Path, case_id: str, suffix: str = "") -> Path:
    """``folder/case_id+suffix``, guaranteed to stay inside ``folder``."""
    check_case_id(case_id)
    folder = Path(folder).resolve()
    p = (folder / f"{case_id}{suffix}").resolve()
    if folder != p.parent:
        raise DatasetError(f"Case id {case_id!r} resolves outside {folder}; rename the case.")
    return p


@dataclass
class LabelRoles:
    """Which label ids make up the organ and the tumour, resolved by label *name*."""

    labels: dict[str, tuple[int, ...]]
    organ_names: tuple[str, ...]
    tumor_names: tuple[str, ...]

    @property
    def organ_ids(self) -> tuple[int, ...]:
        return tuple(sorted({i for n in self.organ_names for i in self.labels[n]}))

    @property
    def tumor_ids(self) -> tuple[int, ...]:
        return tuple(sorted({i for n in self.tumor_names for i in self.labels[n]}))

    @property
    def all_ids(self) -> tuple[int, ...]:
        return tuple(sorted({i for v in self.labels.values() for i in v}))

    def masks(self, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean (organ, tumour) masks of a segmentation array."""
        return np.isin(seg, self.organ_ids), np.isin(seg, self.tumor_ids)

    def to_dict(self) -> dict:
        return {
            "organ_labels": {n: list(self.labels[n]) for n in self.organ_names},
            "tumor_labels": {n: list(self.labels[n]) for n in self.tumor_names},
            "all_labels": {n: list(v) for n, v in self.labels.items()},
        }


def _label_ids(value) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def resolve_label_roles(dataset_json: dict, dataset_name: str = "dataset") -> LabelRoles:
    """Resolve organ and tumour label ids by name (see module docstring)."""
    if "labels" not in dataset_json or not isinstance(dataset_json["labels"], dict):
        raise DatasetError(f"{dataset_name}: dataset.json has no 'labels' dictionary (nnU-Net v2 format required).")
    labels = {str(k): _label_ids(v) for k, v in dataset_json["labels"].items() if str(k) not in ("ignore",)}
    by_lower = {k.lower(): k for k in labels}
    opts = dataset_json.get("neonet", {}) or {}

    def resolve(key: str, defaults: Sequence[str], aliases: Sequence[str] = ()) -> tuple[str, ...]:
        requested = opts.get(key)
        explicit = requested is not None
        if requested is None:
            requested = list(defaults)
        if isinstance(requested, str):
            requested = [requested]
        names = []
        for name in requested:
            hit = by_lower.get(str(name).lower())
            if hit is None and not explicit:
                hit = next((by_lower[a] for a in aliases if a in by_lower), None)
            if hit is None:
                raise DatasetError(
                    f"{dataset_name}: label name {name!r} ({key}) is not in dataset.json 'labels' "
                    f"{sorted(labels)}. Either rename the label in dataset.json or set "
                    f"\"neonet\": {{\"{key}\": [<names from labels>]}} in dataset.json."
                )
            names.append(hit)
        return tuple(names)

    organ = resolve("organ_labels", DEFAULT_ORGAN_LABELS)
    tumor = resolve("tumor_labels", DEFAULT_TUMOR_LABELS, _TUMOR_ALIASES)
    if set(organ) & set(tumor):
        raise DatasetError(
            f"{dataset_name}: label(s) {sorted(set(organ) & set(tumor))} are both organ and tumour; "
            "fix 'neonet.organ_labels' / 'neonet.tumor_labels' in dataset.json."
        )
    roles = LabelRoles(labels=labels, organ_names=organ, tumor_names=tumor)
    if 0 in roles.organ_ids or 0 in roles.tumor_ids:
        raise DatasetError(f"{dataset_name}: the organ/tumour labels must not include the background id 0.")
    return roles


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


def _geometry(img) -> tuple:
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def verify_case(ds: NeoNetDataset, case_id: str, full: bool = True) -> tuple[list[str], list[str], dict]:
    """Check one case. Returns (errors, warnings, info). ``full`` reads voxels (NaN/Inf, labels)."""
    import SimpleITK as sitk

    errors, warnings = [], []
    info: dict = {}
    files = [Path(f) for f in ds.cases[case_id]["images"]]
    label_file = ds.label_file(case_id)
    broken = [m for m in (file_problem(f, case_id) for f in [*files, label_file]) if m]
    if broken:  # never let SimpleITK zero-fill a truncated file
        return broken, [], info
    try:
        imgs = [sitk.ReadImage(str(f)) if full else _read_header(f) for f in files]
        lab = sitk.ReadImage(str(label_file)) if full else _read_header(label_file)
    except (RuntimeError, ValueError, OSError) as e:
        return [f"case {case_id!r}: cannot read image/label ({str(e).splitlines()[0][:200]}); re-export the file."], [], info
    g_lab = _geometry(lab)
    info["shape_xyz"] = list(g_lab[0])
    info["spacing_xyz"] = [float(s) for s in g_lab[1]]
    for f, img in zip(files, imgs):
        g = _geometry(img)
        if len(g[0]) != len(g_lab[0]) or len(g[0]) != 3:
            errors.append(
                f"case {case_id!r}: image {f.name} has {len(g[0])} dimensions {tuple(g[0])}, the label "
                f"{len(g_lab[0])}; each image file must be one 3D volume. dataset.json declares "
                f"{len(ds.dataset_json.get('channel_names', {}))} channel(s): split a multi-channel/4D image into "
                f"{case_id}_0000, {case_id}_0001, ... files and declare every channel in channel_names."
            )
            continue
        if g[0] != g_lab[0]:
            errors.append(
                f"case {case_id!r}: image {f.name} has size {g[0]} but label has {g_lab[0]}; resample the label onto "
                "the image grid."
            )
        elif not (np.allclose(g[1], g_lab[1], atol=1e-4) and np.allclose(g[2], g_lab[2], atol=1e-3)
                  and np.allclose(g[3], g_lab[3], atol=1e-4)):
            errors.append(
                f"case {case_id!r}: image {f.name} and its label differ in spacing/origin/direction (affine "
                "mismatch); copy the image geometry onto the label (e.g. SimpleITK CopyInformation) if the voxels "
                "correspond, else resample."
            )
    if not full:
        return errors, warnings, info
    for f, img in zip(files, imgs):
        try:
            arr = _raw_voxels(f, img)
        except Exception as e:  # a reader failing deep inside: never a traceback, always the case and the fix
            errors.append(f"case {case_id!r}: image {f.name} cannot be read in full ({type(e).__name__}: {e}); "
                          "copy it again from its source or re-export it.")
            continue
        if not np.all(np.isfinite(arr)):
            n = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            errors.append(f"case {case_id!r}: image {f.name} has {n} NaN/Inf voxel(s); replace them (e.g. with 0).")
    seg = sitk.GetArrayViewFromImage(lab)
    values = np.unique(seg)
    unknown = sorted(set(values.tolist()) - set(ds.roles.all_ids) - {0})
    if unknown:
        errors.append(
            f"case {case_id!r}: label file contains value(s) {unknown} not declared in dataset.json 'labels' "
            f"{ds.roles.labels}; declare them or fix the label file."
        )
    n_tumor = int(np.isin(seg, ds.roles.tumor_ids).sum())
    info["tumor_voxels"] = n_tumor
    if n_tumor == 0:
        warnings.append(
            f"case {case_id!r}: empty tumour (no voxel of {list(ds.roles.tumor_names)}); its TLCR patch will be "
            "all zeros and flagged 'empty_tumor'."
        )
    return errors, warnings, info


def _raw_voxels(path: Path, img) -> np.ndarray:
    """Voxels as stored. ITK's NIfTI reader turns NaN into 0, so NIfTI files are read with nibabel."""
    import SimpleITK as sitk

    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    return sitk.GetArrayViewFromImage(img)


def _read_header(path: Path):
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()

    class _H:  # minimal view with the same accessors as an Image
        GetSize = staticmethod(lambda: r.GetSize())
        GetSpacing = staticmethod(lambda: r.GetSpacing())
        GetOrigin = staticmethod(lambda: r.GetOrigin())
        GetDirection = staticmethod(lambda: r.GetDirection())

    return _H()


def verify_dataset(ds: NeoNetDataset, full: bool = True, case_ids: Iterable[str] | None = None,
                   num_processes: int = 1) -> dict:
    """Check every case; raise :class:`DatasetError` listing all errors; return a report."""
    from tqdm import tqdm

    case_ids = list(case_ids) if case_ids is not None else ds.case_ids
    errors, warnings, infos = [], [], {}
    if num_processes > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(num_processes, mp_context=mp.get_context("spawn")) as ex:
            results = list(tqdm(ex.map(verify_case, [ds] * len(case_ids), case_ids, [full] * len(case_ids)),
                                total=len(case_ids), desc="verify", disable=None))
    else:
        results = [verify_case(ds, c, full) for c in tqdm(case_ids, desc="verify", disable=None)]
    for cid, (e, w, i) in zip(case_ids, results):
        errors += e
        warnings += w
        infos[cid] = i
    for w in warnings:
        logger.warning(w)
    if errors:
        raise DatasetError(errors)
    empty = [c for c, i in infos.items() if i.get("tumor_voxels", 1) == 0]
    return {"n_cases": len(case_ids), "warnings": warnings, "empty_tumor_cases": empty, "cases": infos}
