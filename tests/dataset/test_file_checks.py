"""Seeded corruption fuzz: every corrupted image or label ends in a named error (or a QC flag) in
planning's dataset verification and in neonet_predict's input reading; never a silent success with
changed voxels, never a traceback from deep inside a reader."""
from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.verification import verify_dataset
from neonet_toolkit.demo.phantom import make_phantom_dataset
from neonet_toolkit.inference.inputs import discover_inputs


def _truncate(frac):
    def f(p: Path, rng):
        data = p.read_bytes()
        p.write_bytes(data[: max(1, int(len(data) * frac))])
    return f


def _flip_header_bytes(p: Path, rng):
    raw = bytearray(gzip.decompress(p.read_bytes()))
    for i in rng.choice(np.arange(40, 56), size=4, replace=False):  # the dim[] field of the NIfTI-1 header
        raw[i] ^= 0xFF
    p.write_bytes(gzip.compress(bytes(raw)))


def _flip_data_bytes_keep_length(p: Path, rng):
    comp = bytearray(p.read_bytes())
    for i in rng.integers(len(comp) // 2, len(comp) - 8, size=8):  # inside the deflate stream: CRC breaks
        comp[i] ^= 0xFF
    p.write_bytes(bytes(comp))


def _empty(p: Path, rng):
    p.write_bytes(b"")


def _wrong_dtype(p: Path, rng):
    img = nib.load(str(p))
    arr = np.asarray(img.dataobj).astype(np.float64) + 0.5  # fractional "labels" / shifted image
    nib.save(nib.Nifti1Image(arr, img.affine), str(p))


def _two_d(p: Path, rng):
    img = nib.load(str(p))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), str(p))


def _four_d(p: Path, rng):
    img = nib.load(str(p))
    arr = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([arr, arr], -1), img.affine), str(p))


CORRUPTIONS = {
    "truncate_10%": _truncate(0.10), "truncate_50%": _truncate(0.50), "truncate_90%": _truncate(0.90),
    "truncate_99%": _truncate(0.99), "flip_header_bytes": _flip_header_bytes,
    "flip_data_bytes": _flip_data_bytes_keep_length, "empty_file": _empty, "wrong_dtype": _wrong_dtype,
    "wrong_dimensions_2d": _two_d, "4d_image": _four_d,
}
# a float image with shifted values is still a valid image: planning accepts it (no silent *change*); for a
# label the fractional values are undeclared labels -> named error
ACCEPTABLE_VALID = {("image", "wrong_dtype")}


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return make_phantom_dataset(root / "raw", 777, "Fuzz", n_train=3, n_test=0, shape_xyz=(20, 20, 10),
                                shape_jitter=0, seed=3, positive_fraction=0.34)


@pytest.mark.parametrize("target", ["image", "label"])
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_planning_verification_names_every_corruption(tiny_raw, tmp_path, kind, target):
    raw = tmp_path / tiny_raw.name
    shutil.copytree(tiny_raw, raw)
    ds = NeoNetDataset.load(raw)
    case = ds.case_ids[1]
    victim = Path(ds.cases[case]["images"][0]) if target == "image" else ds.label_file(case)
    CORRUPTIONS[kind](victim, np.random.default_rng(zlib.crc32(f"{kind}{target}".encode())))
    if (target, kind) in ACCEPTABLE_VALID:
        verify_dataset(NeoNetDataset.load(raw))
        return
    with pytest.raises(DatasetError) as e:
        verify_dataset(NeoNetDataset.load(raw))
    assert f"case {case!r}" in str(e.value), str(e.value)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_prediction_inputs_flag_the_corrupt_case_and_keep_the_others(tiny_raw, tmp_path, kind):
    inp = tmp_path / "in"
    inp.mkdir()
    files = sorted((tiny_raw / "imagesTr").glob("*_0000.nii.gz"))
    for f in files:
        shutil.copy(f, inp / f.name)
    victim = inp / files[1].name
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(victim)))
    CORRUPTIONS[kind](victim, np.random.default_rng(zlib.crc32(kind.encode())))
    cases = {c.case_id: c for c in discover_inputs(inp)}
    bad_id = files[1].name[: -len("_0000.nii.gz")]
    assert len(cases) == len(files)
    assert all(c.error is None for cid, c in cases.items() if cid != bad_id)
    if kind == "wrong_dtype":  # still a readable 3D image; its values differ, which QC (intensity) may flag
        assert cases[bad_id].error is None
        after = sitk.GetArrayFromImage(sitk.ReadImage(str(victim)))
        assert not np.array_equal(before, after)
        return
    assert cases[bad_id].error and f"case {bad_id!r}" in cases[bad_id].error
