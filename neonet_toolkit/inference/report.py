"""Pictures people look at: a TLCR crop with its masks (and saliency) in three views."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

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
