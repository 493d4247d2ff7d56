"""The NeoCls side of ``neonet_predict``: one classifier run's fold models, loaded once, as an ensemble.

Which run: ``--cls-run``, else the deployable choice of ``neonet_find_best_configuration``
(``best_configuration.json``), else the default rule (:func:`~neonet_toolkit.inference.postprocessing.default_cls_run`);
where it came from is part of the provenance. Each fold model gives a calibrated probability; the decision rule and
its thresholds come from the folds' own training data (:func:`~neonet_toolkit.models.cls.decision_rule`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.visualize import OcclusionSensitivity

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.inference.postprocessing import default_cls_run
from neonet_toolkit.models.cls import decision_rule, load_fold_classifier, predict_proba
from neonet_toolkit.models.cls_results import load_best_configuration
from neonet_toolkit.utilities.identifiers import FINAL_CHECKPOINT, ResultLayout, finished_folds, list_cls_runs

logger = logging.getLogger(__name__)


class ClassifierEnsemble:
    """The fold classifiers ``members`` = [(fold, network, info)] of run ``run`` (chosen by ``source``)."""

    def __init__(self, layout: ResultLayout, cls_run: str | None, folds: Sequence[int | str] | None,
                 device: torch.device, crop_size: Sequence[int]):
        name = layout.dataset_name
        runs = list_cls_runs(layout.results, layout.plans_name)
        self.source = "--cls-run" if cls_run is not None else "default rule"
        if cls_run is None:
            best = load_best_configuration(layout)
            if best and best.get("predict_default") in runs:
                cls_run, self.source = best["predict_default"], "neonet_find_best_configuration"
            else:
                cls_run = default_cls_run(runs)
            if cls_run is None:
                raise FileNotFoundError(
                    f"No NeoCls run chosen for {name}; trained runs: {runs or 'none'}. "
                    + ("Pass --cls-run NAME." if runs else
                       f"Train one (`neonet_train {name} cls FOLD` for every fold) first."))
        self.run, self.device = cls_run, device
        self.folder = layout.stage_root(cls_run)
        available = sorted(finished_folds(self.folder))
        use = [f for f in (folds if folds is not None else available) if isinstance(f, int) or str(f).isdigit()]
        missing = [f for f in use if int(f) not in available]
        if not use or missing:
            raise FileNotFoundError(
                f"NeoCls run {self.folder} has trained folds {available}; requested {use or 'any'}. Train the missing "
                f"folds (`neonet_train {name} cls {missing[0] if missing else 0}`) or choose folds with -f.")
        self.members: list[tuple[int, torch.nn.Module, dict]] = []
        for f in use:
            net, info = load_fold_classifier(layout, cls_run, int(f), device, layout.plans_name)
            if list(info["crop_size"]) != list(crop_size):
                raise DatasetError(
                    f"Mismatched plans: classifier {cls_run} fold {f} was trained on {info['crop_size']} crops but "
                    f"neonet_plans.json of {name} now says {list(crop_size)}. Retrain NeoCls or restore the plans "
                    "it was trained with.")
            self.members.append((int(f), net, info))
        logger.info("NeoCls run %s (%s), folds %s", cls_run, self.source, [f for f, _, _ in self.members])

    @property
    def thresholds(self) -> list[float]:
        return [float(i["threshold"]) for _, _, i in self.members]

    def checkpoint_files(self) -> list[Path]:
        return [self.folder / f"fold_{f}" / FINAL_CHECKPOINT for f, _, _ in self.members]

    def classify(self, patch: np.ndarray) -> list[float]:
        """The calibrated probability of each fold model for one TLCR patch (2, *crop)."""
        return [float(predict_proba(net, info, patch[None], self.device)[0]) for _, net, info in self.members]

    def saliency(self, patch: np.ndarray) -> np.ndarray:
        """Occlusion sensitivity (MONAI): how much the fold-averaged probability drops when a small cube
        of the crop is set to 0 (the value outside the masks). Positive = evidence for PNI, negative =
        against. Model-agnostic, so it also covers PattenNet's frozen encoder (no gradients needed)."""
        x = torch.from_numpy(patch[None]).float().to(self.device)
        mask = [max(2, c // 4) for c in patch.shape[1:]]  # 4x4x4 blocks: ~100 forward passes per fold
        maps = []
        for _, net, _ in self.members:
            occ = OcclusionSensitivity(net, mask_size=mask, n_batch=16, verbose=False, mode=0.0, overlap=0.25,
                                       activate=torch.sigmoid)
            with torch.no_grad():
                full = torch.sigmoid(net(x).reshape(-1)[0])
                occ_map, _ = occ(x)
            occ_map = occ_map.reshape(patch.shape[1:])  # (1, 1, *crop[, 1]) for a single-logit model
            maps.append((full - occ_map).cpu().numpy())
        return np.mean(maps, 0).astype(np.float32)

    def provenance(self) -> dict:
        infos = [i for _, _, i in self.members]
        return {
            "threshold": float(np.mean(self.thresholds)),
            "threshold_rule": "majority of the per-fold decisions (fold probability >= that fold's threshold, "
                              "chosen on its training data: "
                              + ", ".join(sorted({str(i['threshold_source']) for i in infos}))
                              + "); a tie is decided by the mean probability against the mean threshold",
            "probability": "mean over fold classifiers of the calibrated probability",
            "decision_rules": {str(f): decision_rule(i) for f, _, i in self.members},
            "cls_crop_source": sorted({str(i.get("crop_source", "gt")) for i in infos}),
            "cls_protocol": sorted({str(i.get("protocol", i.get("early_stopping", "val"))) for i in infos}),
        }
