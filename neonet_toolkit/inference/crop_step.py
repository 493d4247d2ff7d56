"""The TLCR step of ``neonet_predict``: the final mask and the image on the NeoNet preprocessed grid, cropped.

:class:`CropStep` puts a case on the grid the classifiers were trained on (the NeoNet plans' nnU-Net
configuration) and runs TLCR in the canonical orientation of the image geometry
(:mod:`neonet_toolkit.preprocessing.orientation`, as for the training patches). When NeoSeg's preprocessing is
exactly the NeoNet plans' (``same_preprocessing``), NeoSeg's preprocessed image is reused and only the mask is
brought onto that grid; otherwise image and mask go through the NeoNet plans' preprocessing together. It also
writes the optional crop files (``--save-crops`` / ``--saliency``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.labels import LabelRoles
from neonet_toolkit.inference.report import crop_png
from neonet_toolkit.preprocessing.orientation import canonical_orientation, canonical_tlcr
from neonet_toolkit.utilities.io import atomic_path

PREPROCESSING_KEYS = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
                      "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs", "preprocessor_name")


class CropStep:
    """TLCR of ``crop_size`` on the grid of ``plans_manager``/``configuration_manager`` (the NeoNet plans')."""

    def __init__(self, plans_manager, configuration_manager, dataset_json: dict, roles: LabelRoles,
                 crop_size: Sequence[int], spacing: Sequence[float], image_channel: int = 0,
                 reuse_preprocessing: bool = False, timings: dict | None = None):
        self.plans_manager, self.configuration = plans_manager, configuration_manager
        self.dataset_json, self.roles = dataset_json, roles
        self.crop_size, self.spacing = list(crop_size), list(spacing)
        self.image_channel = int(image_channel)
        self.reuse_preprocessing = bool(reuse_preprocessing)
        self.timings = timings if timings is not None else {}

    @staticmethod
    def same_preprocessing(seg_plans_manager, seg_configuration, plans_manager, configuration) -> bool:
        """True when NeoSeg's preprocessing is exactly these plans' (spacing, normalisation, transposition,
        intensity properties): the classifier's grid is then NeoSeg's grid."""
        a, b = seg_configuration.configuration, configuration.configuration
        pa, pb = seg_plans_manager.plans, plans_manager.plans
        return (all(a.get(k) == b.get(k) for k in PREPROCESSING_KEYS)
                and pa.get("transpose_forward") == pb.get("transpose_forward")
                and pa.get("foreground_intensity_properties_per_channel")
                == pb.get("foreground_intensity_properties_per_channel"))

    def crop(self, data: np.ndarray, seg: np.ndarray, props: dict, preprocessed: tuple | None = None):
        """(image patch, label patch, TLCR info) of a case: ``data``/``seg``/``props`` in the input geometry;
        ``preprocessed`` = (NeoSeg's preprocessed image, its properties), used when ``reuse_preprocessing``.
        ``info.canonical_flips`` records the flips."""
        t0 = time.perf_counter()
        if self.reuse_preprocessing and preprocessed is not None:
            d, pprops = preprocessed
            s = self.mask_on_grid(seg, props, pprops, d.shape[1:])
        else:
            pre = self.configuration.preprocessor_class(verbose=False)
            d, s, _ = pre.run_case_npy(data, seg[None].astype(np.int16), dict(props), self.plans_manager,
                                       self.configuration, self.dataset_json)
        orientation = canonical_orientation(props, self.plans_manager.transpose_forward)
        img_p, lab_p, info = canonical_tlcr(d[self.image_channel], s[0], self.roles, self.crop_size, orientation)
        self.timings["tlcr"] = self.timings.get("tlcr", 0.0) + time.perf_counter() - t0
        return img_p, lab_p, info

    def mask_on_grid(self, seg: np.ndarray, props: dict, pprops: dict, grid_shape) -> np.ndarray:
        """The final mask (raw space, after postprocessing) on NeoSeg's preprocessed grid: the seg half of
        nnU-Net's ``run_case_npy`` (transpose, the image's nonzero crop, ``resampling_fn_seg``) without
        the image half, which NeoSeg already did. Same mask as preprocessing image + mask again."""
        pm, cfg = self.plans_manager, self.configuration
        s = seg[None].astype(np.int16).transpose([0, *[i + 1 for i in pm.transpose_forward]])
        s = s[(slice(None), *[slice(a, b) for a, b in pprops["bbox_used_for_cropping"]])]
        spacing = [props["spacing"][i] for i in pm.transpose_forward]
        return cfg.resampling_fn_seg(s, list(grid_shape), spacing, cfg.spacing)

    def write_crops(self, folder: Path, cid: str, img_p: np.ndarray, lab_p: np.ndarray,
                    saliency: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """``CASE_crop_000C.nii.gz`` per channel, ``CASE_crop_mask.nii.gz``, ``CASE_crop.png`` and, with a
        ``saliency`` function, ``CASE_saliency.nii.gz`` (on the preprocessed grid, nnU-Net's transposed axes)."""
        import SimpleITK as sitk

        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)

        def write(arr, name):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
            with atomic_path(folder / name, suffix=".nii.gz") as tmp:
                sitk.WriteImage(im, str(tmp), useCompression=True)

        for ch in range(img_p.shape[0]):
            write(img_p[ch], f"{cid}_crop_{ch:04d}.nii.gz")
        write((lab_p[0] + lab_p[1]).astype(np.uint8), f"{cid}_crop_mask.nii.gz")
        sal = saliency(img_p) if saliency is not None else None
        if sal is not None:
            write(sal, f"{cid}_saliency.nii.gz")
        crop_png(img_p, lab_p, folder / f"{cid}_crop.png", saliency=sal, title=cid, spacing=self.spacing)
        self.timings["export"] = self.timings.get("export", 0.0) + time.perf_counter() - t0
