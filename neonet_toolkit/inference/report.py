"""Pictures people look at: a TLCR crop with its masks (and saliency) in three views; a DICOM SEG over its source."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from neonet_toolkit.inference.dicom_out import read_series, seg_label_frames, seg_label_names, source_pixels
from neonet_toolkit.utilities.io import save_figure


def _center(mask: np.ndarray) -> tuple[int, ...]:
    idx = np.argwhere(mask)
    if idx.size == 0:
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(v) for v in np.round(idx.mean(0)))


def crop_png(image_patch: np.ndarray, label_patch: np.ndarray, path: str | Path, saliency: np.ndarray | None = None,
             title: str = "", spacing=None) -> Path:
    """Three orthogonal slices through the tumour centre: image (channel 0) with organ/tumour contours,
    and, when given, the saliency map overlaid. ``spacing`` (array order, mm) sets each view's pixel
    aspect ratio, so anisotropic crops are shown with their true proportions."""
    path = Path(path)
    img, roi, tum = image_patch[0], label_patch[0] > 0, label_patch[1] > 0
    sp = [1.0, 1.0, 1.0] if spacing is None else [float(v) for v in spacing]
    c = _center(tum)
    views = [("axis 0", (c[0], slice(None), slice(None)), sp[1] / sp[2]),
             ("axis 1", (slice(None), c[1], slice(None)), sp[0] / sp[2]),
             ("axis 2", (slice(None), slice(None), c[2]), sp[0] / sp[1])]
    rows = 2 if saliency is not None else 1
    fig = Figure(figsize=(9, 3.2 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    vmin, vmax = (np.percentile(img[roi], [1, 99]) if roi.any() else (img.min(), img.max()))
    for j, (name, sl, aspect) in enumerate(views):
        ax = axes[0, j]
        ax.imshow(img[sl], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
        if roi[sl].any():
            ax.contour(roi[sl], levels=[0.5], colors="red", linewidths=0.8)
        if tum[sl].any():
            ax.contour(tum[sl], levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"{name} (red: organ+tumour, yellow: tumour)", fontsize=7)
        ax.axis("off")
        if saliency is not None:
            ax = axes[1, j]
            ax.imshow(img[sl], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
            lim = float(np.abs(saliency).max()) or 1.0
            ax.imshow(saliency[sl], cmap="coolwarm", alpha=0.5, vmin=-lim, vmax=lim, aspect=aspect)
            ax.set_title(f"{name} occlusion (red: for PNI, blue: against)", fontsize=7)
            ax.axis("off")
    fig.suptitle(title + (f"  (spacing {' x '.join(f'{v:g}' for v in sp)} mm)" if spacing is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def dicom_overlay_png(seg_path: str | Path, source_files, path: str | Path, title: str = "", n_slices: int = 3
                      ) -> Path:
    """The SEG drawn over its source series, both read from the DICOM files (pydicom + highdicom): the
    ``n_slices`` source frames with the most pixels of the highest label id (the tumour in the phantom; then any
    label), each label's contour in its colour."""
    ds = read_series(source_files, title or str(seg_path))
    img, lab = source_pixels(ds), seg_label_frames(seg_path, ds, title)
    ids = [int(v) for v in np.unique(lab) if v]
    flat = lab.reshape(len(lab), -1)
    score = (flat == max(ids)).sum(1) * flat.shape[1] + (flat > 0).sum(1) if ids else np.zeros(len(lab))
    picks = sorted(np.argsort(-score, kind="stable")[:n_slices].tolist())
    colours = ["red", "lime", "yellow", "cyan", "magenta", "orange"]
    fig = Figure(figsize=(3.2 * len(picks), 3.4))
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    sp = [float(v) for v in ds[0].PixelSpacing] if "PixelSpacing" in ds[0] else [1.0, 1.0]
    vmin, vmax = np.percentile(img, [1, 99])
    for ax, k in zip(axes, picks):
        ax.imshow(img[k], cmap="gray", vmin=vmin, vmax=vmax, aspect=sp[0] / sp[1])
        for j, i in enumerate(ids):
            if (lab[k] == i).any():
                ax.contour(lab[k] == i, levels=[0.5], colors=colours[j % len(colours)], linewidths=0.9)
        ax.set_title(f"source frame {k + 1}", fontsize=7)
        ax.axis("off")
    names = seg_label_names(seg_path)
    legend = ", ".join(f"{colours[j % len(colours)]}: {names.get(i, 'label')} ({i})" for j, i in enumerate(ids)) \
        or "empty SEG"
    fig.suptitle(f"{title}  DICOM SEG over its source series ({legend})", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=90)
