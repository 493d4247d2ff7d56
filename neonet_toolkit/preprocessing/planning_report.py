"""A first look at a planned dataset: a short text summary and a montage of TLCR crops.

Written by ``neonet_plan_and_preprocess`` next to the plans (``planning_summary.md`` and
``planning_montage.png`` in ``nnUNet_preprocessed/DatasetXXX/``), so a user can check at a glance that
the folds are balanced, the crop covers the tumours with peritumoral margin, and which configuration
this machine will use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from neonet_toolkit.experiment_planning.plans import NeoNetPlans
from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
from neonet_toolkit.utilities.identifiers import NNUNET_PLANS_NAME, SEG_CONFIGURATION
from neonet_toolkit.utilities.io import save_figure, save_text

SUMMARY_FILE = "planning_summary.md"
MONTAGE_FILE = "planning_montage.png"


def planning_summary(plans: NeoNetPlans, splits: list[dict], labels: dict[str, int], fingerprint: dict,
                     meta: dict, device_type: str = "cpu") -> str:
    """Cases per class and fold, median shape and spacing, the crop vs the tumours, the configuration."""
    p = plans.plans
    target = p.get("target", "target")
    lines = [f"# Planned: {p['dataset_name']}", "",
             f"**Cases**: {len(labels)} ({sum(labels.values())} {target}=1, {len(labels) - sum(labels.values())} "
             f"{target}=0)", "", "| fold | training (pos/neg) | validation (pos/neg) |", "|---|---|---|"]
    for k, sp in enumerate(splits):
        tr = [labels[c] for c in sp["train"] if c in labels]
        va = [labels[c] for c in sp["val"] if c in labels]
        lines.append(f"| {k} | {len(tr)} ({sum(tr)}/{len(tr) - sum(tr)}) | {len(va)} ({sum(va)}/{len(va) - sum(va)}) |")
    shapes = np.array(fingerprint.get("shapes_after_crop", []), float)
    spacings = np.array(fingerprint.get("spacings", []), float)
    if shapes.size:
        lines += ["", f"**Median shape** (array order, after nnU-Net's crop to non-zero): "
                      f"{np.median(shapes, 0).astype(int).tolist()}"]
    if spacings.size:
        lines.append(f"**Median spacing** (mm, array order): {np.round(np.median(spacings, 0), 3).tolist()}")
    crop = plans.crop_size
    sp = [float(s) for s in p["spacing"]]
    rep = p["tlcr"].get("report", {})
    med = rep.get("median_tumor_extent_voxels")
    mx = rep.get("max_tumor_extent_voxels")
    lines += ["", f"**TLCR crop**: {crop} voxels = {[round(c * s, 1) for c, s in zip(crop, sp)]} mm "
                  f"(array order, target spacing {sp} mm)"]
    if med:
        margin = [round((c - m) * s / 2, 1) for c, m, s in zip(crop, med, sp)]
        lines.append(f"Median tumour extent {[int(v) for v in med]} voxels, largest {[int(v) for v in mx]}: "
                     f"median peritumoral margin inside the crop {margin} mm per side.")
    exceed = rep.get("cases_tumor_exceeds_crop", [])
    lines.append(f"Tumour larger than the crop: {len(exceed)} case(s)" + (f": {exceed[:20]}" if exceed else "."))
    empty = rep.get("cases_empty_tumor", [])
    if empty:
        lines.append(f"Empty tumour: {empty[:20]}")
    conf = plans.default_configuration(device_type)
    cls = plans.stage("cls", conf, device_type)
    lines += ["", f"**Configuration on this machine** ({device_type}): `{conf}` "
                  f"(classifier {cls['architecture']}, model selection {cls['early_stopping']}, "
                  f"{cls['epochs']} epochs max); other configurations: {plans.available_configurations}."]
    return "\n".join(lines) + "\n"


def planning_montage(patches_folder: Path, case_ids: list[str], path: Path, spacing=None, n: int = 4) -> Path:
    """A few cases' TLCR crops: both channels through the tumour centre, with the mask outlines."""
    meta = load_metadata(patches_folder)["cases"]
    picked = [c for c in case_ids if not meta.get(c, {}).get("empty_tumor", True)][:n] or list(case_ids)[:n]
    sp = [1.0, 1.0, 1.0] if spacing is None else [float(v) for v in spacing]
    fig = Figure(figsize=(7, 3.1 * len(picked)))
    axes = fig.subplots(len(picked), 2, squeeze=False)
    for row, cid in enumerate(picked):
        img, lab = load_patch(patches_folder, cid)
        tum = lab[1] > 0
        k = int(np.argmax(tum.reshape(tum.shape[0], -1).sum(1))) if tum.any() else tum.shape[0] // 2
        for col, (ch, name) in enumerate(((0, "organ+tumour-masked"), (1, "tumour-masked"))):
            ax = axes[row, col]
            ax.imshow(img[ch][k], cmap="gray", aspect=sp[1] / sp[2])
            if lab[0][k].any():
                ax.contour(lab[0][k] > 0, levels=[0.5], colors="red", linewidths=0.8)
            if tum[k].any():
                ax.contour(tum[k], levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(f"{cid} (label {meta.get(cid, {}).get('label')})\n{name}, slice {k}", fontsize=7)
            ax.axis("off")
    fig.suptitle("TLCR crops (red: organ+tumour mask, yellow: tumour)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def nnunet_commands(dataset_name: str, trainer_folder: str) -> list[str]:
    """Plain nnU-Net commands that work on a dataset NeoNet planned (NeoNet's plans and trainers)."""
    did = int(dataset_name[7:10])
    return [f"export nnUNet_extTrainer={trainer_folder}",
            f"nnUNetv2_train {did} {SEG_CONFIGURATION} 0 -p {NNUNET_PLANS_NAME} -tr NeoSegTrainer",
            f"nnUNetv2_predict -i INPUT -o OUTPUT -d {did} -c {SEG_CONFIGURATION} -p {NNUNET_PLANS_NAME} "
            "-tr NeoSegTrainer -f 0"]


def write_planning_report(pp: Path, plans: NeoNetPlans, splits: list[dict], labels: dict[str, int],
                          fingerprint: dict, device_type: str = "cpu") -> dict:
    meta = load_metadata(patch_folder(pp, "gt"))
    text = planning_summary(plans, splits, labels, fingerprint, meta, device_type)
    save_text(text, pp / SUMMARY_FILE)
    montage = planning_montage(patch_folder(pp, "gt"), sorted(labels), pp / MONTAGE_FILE, plans["spacing"])
    return {"summary": text, "summary_file": str(pp / SUMMARY_FILE), "montage_file": str(montage)}
