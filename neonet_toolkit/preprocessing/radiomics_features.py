"""pyradiomics features of TLCR patches: the one owner of the optional ``pyradiomics`` dependency.

Used by the radiomics baseline (NeoCls, ``training/radiomics.py``) and by the generation-quality suite
(Fréchet Radiomics Distance, KID, precision/recall, C2ST, ``evaluation/gen_quality.py``). pyradiomics is an
optional extra: ``pip install numpy && pip install --no-build-isolation pyradiomics==3.0.1`` (its 3.1.0
sdist is broken; ``neonet_toolkit[radiomics]`` pins 3.0.1). Without it, :func:`make_extractor` raises
:class:`RadiomicsUnavailable` with that command.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

logger = logging.getLogger(__name__)

INSTALL_HINT = ("pyradiomics is not installed: `pip install numpy && pip install --no-build-isolation "
                "pyradiomics==3.0.1` (or `pip install neonet_toolkit[radiomics]`).")
# intensity and texture classes (no shape: a synthetic patch shares its mask with the real case it was
# conditioned on, so shape features would measure the mask, not the image)
TEXTURE_CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


class RadiomicsUnavailable(ImportError):
    pass


def radiomics_available() -> bool:
    try:
        import radiomics  # noqa: F401  (optional extra)
        from radiomics import featureextractor  # noqa: F401
    except Exception:  # pyradiomics missing or its C extensions broken
        return False
    return True


@contextlib.contextmanager
def quiet_radiomics():
    """pyradiomics logs every feature at INFO: quiet it for the duration of an extraction, then restore."""
    log = logging.getLogger("radiomics")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def make_extractor(classes: Iterable[str] = TEXTURE_CLASSES, bin_width: float | None = None,
                   bin_count: int | None = None):
    """A pyradiomics extractor with the given feature classes and a fixed bin width (pyradiomics'
    recommendation) or, for callers that asked for it, a fixed bin count."""
    if not radiomics_available():
        raise RadiomicsUnavailable(INSTALL_HINT)
    from radiomics import featureextractor  # optional extra

    if (bin_width is None) == (bin_count is None):
        raise ValueError("make_extractor: give exactly one of bin_width and bin_count.")
    binning = {"binWidth": float(bin_width)} if bin_width is not None else {"binCount": int(bin_count)}
    ext = featureextractor.RadiomicsFeatureExtractor(force2D=False, label=1, minimumROIDimensions=1,
                                                     minimumROISize=1, **binning)
    ext.disableAllFeatures()
    for c in classes:
        ext.enableFeatureClassByName(c)
    return ext


def region_features(image: np.ndarray, mask: np.ndarray, spacing_xyz: Sequence[float], extractor) -> dict[str, float]:
    """``original_*`` features of ``image`` (3D, array order z, y, x) inside ``mask``; {} for a mask under 2 voxels."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.sum() < 2:
        return {}
    img = sitk.GetImageFromArray(np.asarray(image, np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    msk = sitk.GetImageFromArray(m)
    msk.CopyInformation(img)
    out = {}
    with quiet_radiomics():
        result = extractor.execute(img, msk)
    for k, v in result.items():
        if k.startswith("original_"):
            try:
                out[k[len("original_"):]] = float(v)
            except (TypeError, ValueError):
                continue
    return out


def feature_matrix(images: np.ndarray, masks: np.ndarray, spacing_xyz: Sequence[float], extractor,
                   desc: str = "radiomics") -> tuple[list[str], np.ndarray]:
    """(feature names, (N, F) matrix) of N 3D images inside their masks; a feature missing for a patch is NaN."""
    rows = [region_features(im, m, spacing_xyz, extractor)
            for im, m in tqdm(list(zip(images, masks)), desc=desc, disable=None, leave=False)]
    names = sorted({k for r in rows for k in r})
    x = np.array([[r.get(k, np.nan) for k in names] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    return names, x
