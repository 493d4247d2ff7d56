"""Label semantics, owned by one object: roles (organ, tumour) resolved by name from dataset.json, never by
integer id, with the tumour/tumor alias and the masks of a segmentation."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError

logger = logging.getLogger(__name__)


DEFAULT_ORGAN_LABELS = ("liver",)
DEFAULT_TUMOR_LABELS = ("tumor",)
_TUMOR_ALIASES = ("tumour",)


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


def remap_labels(seg: np.ndarray, label_map: dict[int, int], dtype=np.uint8) -> np.ndarray:
    """Map label ids of ``seg`` through ``label_map`` (ids not in the map become 0, background), with one
    look-up table: a model's label space onto the dataset's (NeoSeg reuse, OOF masks, prediction)."""
    lut = np.zeros(max(max(label_map, default=0), int(seg.max()) if seg.size else 0) + 1, dtype=dtype)
    for s, t in label_map.items():
        lut[int(s)] = int(t)
    return lut[np.asarray(seg).astype(np.int64)]
