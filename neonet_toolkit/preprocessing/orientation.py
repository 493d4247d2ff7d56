"""One canonical orientation for TLCR crops, whatever order the voxels were stored in.

nnU-Net ignores the direction cosines: its preprocessed array is the file's storage order
(``(z, y, x)`` for SimpleITK, the same for nibabel after its ``(2, 1, 0)`` transpose), transposed by
the plans' ``transpose_forward``. The same anatomy stored with x reversed (and the affine adjusted)
is therefore a mirrored array, and a crop taken on it shows the classifier mirrored anatomy.

Convention (:data:`ORIENTATION_CONVENTION`, part of the TLCR patch settings hash): every spatial axis
of the preprocessed array is made to point in the **positive** direction of its dominant physical
axis in DICOM/ITK LPS coordinates (x: right→left, y: anterior→posterior, z: inferior→superior), by
reversing the axes that point the other way. This is what an image with identity direction
(SimpleITK) already is, so such images are left exactly as they are.

Permutations are **not** undone: the crop size is given in array order and nnU-Net resamples each
array axis to the target spacing of that array position, so a case whose storage order permutes
the physical axes relative to the training data is already on another grid before any crop. Such
a case is recognised (:attr:`CanonicalOrientation.permuted`) and logged; what it does to the mask
and the probability is measured by ``benchmarks/orientation.py`` (docs/results/orientation/).

The dominant axis and its sign come from :func:`nibabel.orientations.io_orientation` (polar
decomposition, ties resolved so that two axes never share a physical axis), applied to the
geometry nnU-Net's reader kept in the case properties:

* SimpleITKIO / SimpleITKIOWithReorient: ``props["sitk_stuff"]["direction"]``, a row-major 3×3 whose
  column *j* is the LPS direction of index axis *j* (x, y, z); array axis *a* is index axis ``2 - a``.
* NibabelIO / NibabelIOWithReorient: ``props["nibabel_stuff"]["original_affine"]`` (or
  ``"reoriented_affine"`` when present: that is the grid the array is on), in RAS, converted to LPS;
  array axis *a* is voxel axis ``2 - a``.

Any other reader (or properties without geometry) leaves the arrays as they are, with one warning
per reason and process.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from nibabel.orientations import io_orientation

from neonet_toolkit.dataset.labels import LabelRoles
from neonet_toolkit.preprocessing.tlcr import TLCRInfo, tlcr_from_segmentation

logger = logging.getLogger(__name__)

ORIENTATION_CONVENTION = "canonical-flips-lps-v1"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_warned: set[str] = set()


@dataclass(frozen=True)
class CanonicalOrientation:
    """How the preprocessed array of one case maps onto the canonical orientation.

    ``flips``: spatial axes of the preprocessed array to reverse (sorted; empty = already canonical).
    ``physical_axes``: per preprocessed axis, its dominant LPS axis (0 = x, 1 = y, 2 = z); ``None``
    when the geometry is unknown. ``expected_axes``: the physical axes an identity-direction image
    has on this plans' grid (``2 - transpose_forward[k]``). ``source``: where the geometry came from
    (``"sitk_stuff"``, ``"nibabel_stuff"`` or ``"none"``).
    """

    flips: tuple[int, ...]
    physical_axes: tuple[int, ...] | None
    expected_axes: tuple[int, ...]
    source: str

    @property
    def known(self) -> bool:
        return self.physical_axes is not None

    @property
    def permuted(self) -> bool:
        """True when the storage order permutes the physical axes relative to the training convention."""
        return self.known and self.physical_axes != self.expected_axes


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("Orientation unknown (%s): TLCR crops of such cases are taken in storage order, so the same "
                       "anatomy stored mirrored gives a mirrored crop. Use a NIfTI/SimpleITK reader (dataset.json "
                       "'overwrite_image_reader_writer') to get canonical crops.", reason)


def index_axis_directions(props: dict) -> tuple[np.ndarray | None, str]:
    """(3×3 matrix whose column *j* is the LPS direction of index axis *j* (x, y, z), source key).

    ``(None, reason)`` when the properties hold no usable 3D geometry."""
    sitk_stuff = props.get("sitk_stuff") if isinstance(props, dict) else None
    nib_stuff = props.get("nibabel_stuff") if isinstance(props, dict) else None
    if isinstance(sitk_stuff, dict) and sitk_stuff.get("direction") is not None:
        d = np.asarray(sitk_stuff["direction"], dtype=np.float64).ravel()
        if d.size != 9:
            return None, f"sitk direction has {d.size} entries, not the 9 of a 3D image"
        m, source = d.reshape(3, 3), "sitk_stuff"
    elif isinstance(nib_stuff, dict) and (nib_stuff.get("reoriented_affine") is not None
                                          or nib_stuff.get("original_affine") is not None):
        a = nib_stuff.get("reoriented_affine")
        a = np.asarray(nib_stuff["original_affine"] if a is None else a, dtype=np.float64)
        if a.shape != (4, 4):
            return None, f"nibabel affine has shape {a.shape}, not the 4x4 of a 3D image"
        m, source = _RAS_TO_LPS @ a[:3, :3], "nibabel_stuff"
    else:
        return None, "the image reader stored no 'sitk_stuff' direction or 'nibabel_stuff' affine in the properties"
    if not np.all(np.isfinite(m)) or np.any(np.linalg.norm(m, axis=0) == 0):
        return None, f"degenerate direction matrix in '{source}': {m.round(4).tolist()}"
    return m, source


def flips_from_directions(directions: np.ndarray, transpose_forward: Sequence[int]) -> tuple[tuple[int, ...],
                                                                                             tuple[int, ...]]:
    """(flips, physical_axes) of the preprocessed array for index-axis directions ``directions`` (columns
    x, y, z, LPS) and nnU-Net's ``transpose_forward`` (preprocessed axis *k* = raw array axis
    ``transpose_forward[k]`` = index axis ``2 - transpose_forward[k]``)."""
    tf = [int(t) for t in transpose_forward]
    if sorted(tf) != [0, 1, 2]:
        raise ValueError(f"transpose_forward {transpose_forward} is not a permutation of (0, 1, 2).")
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=np.float64)
    ornt = io_orientation(affine)  # per index axis: (dominant output axis, +1/-1)
    if np.any(np.isnan(ornt)):
        raise ValueError(f"direction matrix {np.asarray(directions).round(4).tolist()} has rank < 3.")
    axes = tuple(int(ornt[2 - t, 0]) for t in tf)
    flips = tuple(k for k, t in enumerate(tf) if ornt[2 - t, 1] < 0)
    return flips, axes


def canonical_orientation(props: dict, transpose_forward: Sequence[int]) -> CanonicalOrientation:
    """The flips that bring one case's preprocessed arrays to the canonical orientation (see module doc).

    Never raises on missing or unusable geometry: it warns once per reason and returns no flips."""
    tf = [int(t) for t in transpose_forward]
    expected = tuple(2 - t for t in tf)
    m, source = index_axis_directions(props)
    if m is None:
        _warn_once(source)
        return CanonicalOrientation((), None, expected, "none")
    try:
        flips, axes = flips_from_directions(m, tf)
    except ValueError as e:
        _warn_once(str(e))
        return CanonicalOrientation((), None, expected, "none")
    out = CanonicalOrientation(flips, axes, expected, source)
    if out.permuted:
        logger.info("Storage order permutes the physical axes (array axes point along %s, the training convention "
                    "along %s): only flips are undone, the crop is taken on a permuted grid.", axes, expected)
    return out


def to_canonical(array: np.ndarray, flips: Sequence[int]) -> np.ndarray:
    """``array`` with the spatial axes ``flips`` (counted over its last three axes) reversed; the array itself
    when there is nothing to flip."""
    if not flips:
        return array
    lead = array.ndim - 3
    return np.flip(array, axis=tuple(lead + int(a) for a in flips))


def canonical_tlcr(image: np.ndarray, seg: np.ndarray, roles: LabelRoles, crop_size: Sequence[int],
                   orientation: CanonicalOrientation) -> tuple[np.ndarray, np.ndarray, TLCRInfo]:
    """TLCR (:func:`~neonet_toolkit.preprocessing.tlcr.tlcr_from_segmentation`) on the canonically oriented
    image and label map (both spatial, same shape, preprocessed grid). The returned info records the
    flips applied (``canonical_flips``; ``None`` when the orientation was unknown and nothing was flipped);
    its crop origin and bbox are in canonical coordinates."""
    img_p, lab_p, info = tlcr_from_segmentation(to_canonical(image, orientation.flips),
                                                to_canonical(seg, orientation.flips), roles, crop_size)
    return img_p, lab_p, replace(info, canonical_flips=tuple(orientation.flips) if orientation.known else None)
