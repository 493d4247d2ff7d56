"""Seeded corruption fuzz: every corrupted image or label ends in a named error that gives the right reason
in planning's dataset verification and in neonet_predict's input reading; a corruption that still leaves a
valid image is accepted only when what the pipeline reads is exactly what the file holds. Never a silent
success with changed (zero-filled) voxels, never a traceback from deep inside a reader.

``python tests/dataset/test_file_checks.py`` prints the fuzz matrix (corruption x stage -> outcome) that
docs/robustness.md reproduces.
"""
from __future__ import annotations

import gzip
import re
import shutil
import struct
import sys
import tempfile
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

ENDING = ".nii.gz"


def _truncate(frac):
    def f(p: Path, rng):
        data = p.read_bytes()
        p.write_bytes(data[: max(1, int(len(data) * frac))])
    return f


def _cut_gzip_trailer(p: Path, rng):  # every voxel is still there; only the CRC-32/length trailer is cut
    p.write_bytes(p.read_bytes()[:-4])


def _append_garbage(p: Path, rng):
    p.write_bytes(p.read_bytes() + rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


def _edit_header(edit):
    def f(p: Path, rng):
        raw = bytearray(gzip.decompress(p.read_bytes()))
        edit(raw, rng)
        p.write_bytes(gzip.compress(bytes(raw)))
    return f


def _flip_dims(raw, rng):
    for i in rng.choice(np.arange(40, 56), size=4, replace=False):  # the dim[] field of the NIfTI-1 header
        raw[i] ^= 0xFF


def _flip_datatype(raw, rng):  # datatype (int16 at byte 70) -> a code no reader knows
    raw[70] ^= 0xFF
    raw[71] ^= 0x7F


def _vox_offset_far(raw, rng):  # the data would start 10 MB into the file
    raw[108:112] = struct.pack("<f", 1.0e7)


def _header_only(raw, rng):
    del raw[352:]


def _short_data(raw, rng):  # a valid gzip stream whose voxel data ends 100 bytes early
    del raw[-100:]


def _flip_data_bytes_keep_length(p: Path, rng):
    comp = bytearray(p.read_bytes())
    for i in rng.integers(len(comp) // 2, len(comp) - 8, size=8):  # inside the deflate stream: CRC breaks
        comp[i] ^= 0xFF
    p.write_bytes(bytes(comp))


def _empty(p: Path, rng):
    p.write_bytes(b"")


def _resave(p: Path, arr):
    img = nib.load(str(p))
    nib.save(nib.Nifti1Image(arr, img.affine), str(p))


def _wrong_dtype(p: Path, rng):  # float64 with fractional values: a shifted image, or undeclared "labels"
    _resave(p, np.asarray(nib.load(str(p)).dataobj).astype(np.float64) + 0.5)


def _two_d(p: Path, rng):
    _resave(p, np.asarray(nib.load(str(p)).dataobj)[..., 0])


def _four_d(p: Path, rng):
    arr = np.asarray(nib.load(str(p)).dataobj)
    _resave(p, np.stack([arr, arr], -1))


def _one_slice_less(p: Path, rng):
    _resave(p, np.asarray(nib.load(str(p)).dataobj)[..., :-1])


CORRUPTIONS = {
    "truncate_10%": _truncate(0.10), "truncate_50%": _truncate(0.50), "truncate_85%": _truncate(0.85),
    "truncate_99%": _truncate(0.99), "cut_gzip_trailer": _cut_gzip_trailer, "append_garbage": _append_garbage,
    "flip_header_dims": _edit_header(_flip_dims), "flip_header_datatype": _edit_header(_flip_datatype),
    "header_vox_offset_beyond_data": _edit_header(_vox_offset_far), "header_only": _edit_header(_header_only),
    "short_data_valid_gzip": _edit_header(_short_data),
    "flip_data_bytes": _flip_data_bytes_keep_length, "empty_file": _empty, "wrong_dtype": _wrong_dtype,
    "wrong_dimensions_2d": _two_d, "4d_image": _four_d, "wrong_shape_one_slice_less": _one_slice_less,
}
ACCEPT = "accepted"
_BROKEN = r"truncated|corrupt"
_HEADER = r"header|truncated"
# the reason each outcome must give (a regular expression on the message), or ACCEPT for a still-valid image
EXPECTED = {k: _BROKEN for k in CORRUPTIONS}
EXPECTED.update({
    "flip_header_dims": _HEADER, "flip_header_datatype": _HEADER, "header_vox_offset_beyond_data": _HEADER,
    "empty_file": r"is empty",
})
PLANNING = {("image", k): v for k, v in EXPECTED.items()} | {("label", k): v for k, v in EXPECTED.items()}
PLANNING.update({
    ("image", "wrong_dtype"): ACCEPT,  # a float image with other values is still an image
    ("label", "wrong_dtype"): r"value\(s\) .* not declared",
    ("image", "wrong_dimensions_2d"): r"2 dimensions.*one 3D volume", ("label", "wrong_dimensions_2d"): r"one 3D volume",
    ("image", "4d_image"): r"4 dimensions.*declares 1 channel.*split",  # a channel-count message (issue #11)
    ("label", "4d_image"): r"one 3D volume",
    ("image", "wrong_shape_one_slice_less"): r"size .* but label has .*resample",
    ("label", "wrong_shape_one_slice_less"): r"size .* but label has .*resample",
})
PREDICTION = dict(EXPECTED)
PREDICTION.update({
    "wrong_dtype": ACCEPT, "wrong_shape_one_slice_less": ACCEPT,  # valid 3D images
    "wrong_dimensions_2d": r"is 2D.*one 3D volume", "4d_image": r"is 4D.*split channels",
})


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(key).encode()))


def _faithful(path: Path) -> bool:
    """What SimpleITK (nnU-Net's reader) gives equals the file's own voxels read in full by nibabel."""
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return np.array_equal(itk, np.asarray(nib.load(str(path)).dataobj).T)


def make_template(root: Path) -> Path:
    return make_phantom_dataset(root / "raw", 777, "Fuzz", n_train=3, n_test=0, shape_xyz=(20, 20, 10),
                                shape_jitter=0, seed=3, positive_fraction=0.34)


def planning_outcome(template: Path, work: Path, kind: str, target: str) -> tuple[str, str, str]:
    """(outcome, message, case) of planning's dataset verification after corrupting one case's image or label."""
    raw = work / template.name
    shutil.copytree(template, raw)
    ds = NeoNetDataset.load(raw)
    case = ds.case_ids[1]
    victim = Path(ds.cases[case]["images"][0]) if target == "image" else ds.label_file(case)
    CORRUPTIONS[kind](victim, _rng(kind, target))
    try:
        verify_dataset(NeoNetDataset.load(raw))
    except DatasetError as e:
        return "error", str(e), case
    return (ACCEPT if _faithful(victim) else "SILENTLY CHANGED"), "", case


def prediction_outcome(template: Path, work: Path, kind: str) -> tuple[str, str, str, list]:
    """(outcome, message, case, other cases' errors) of neonet_predict's input reading, one image corrupted."""
    inp = work / "in"
    inp.mkdir()
    files = sorted((template / "imagesTr").glob(f"*_0000{ENDING}"))
    for f in files:
        shutil.copy(f, inp / f.name)
    victim = inp / files[1].name
    case = files[1].name[: -len(f"_0000{ENDING}")]
    CORRUPTIONS[kind](victim, _rng(kind))
    cases = {c.case_id: c for c in discover_inputs(inp)}
    assert sorted(cases) == sorted(f.name[: -len(f"_0000{ENDING}")] for f in files)  # nobody dropped
    others = [c.error for cid, c in cases.items() if cid != case]
    if cases[case].error:
        return "error", cases[case].error, case, others
    return (ACCEPT if _faithful(victim) else "SILENTLY CHANGED"), "", case, others


def _check(outcome: str, message: str, case: str, expected: str) -> None:
    if expected == ACCEPT:
        assert outcome == ACCEPT, (outcome, message)
        return
    assert outcome == "error", f"expected a named error matching {expected!r}, got {outcome}"
    assert f"case {case!r}" in message, message
    assert re.search(expected, message, re.S), message


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    return make_template(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("target", ["image", "label"])
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_planning_verification_names_every_corruption(tiny_raw, tmp_path, kind, target):
    outcome, message, case = planning_outcome(tiny_raw, tmp_path, kind, target)
    _check(outcome, message, case, PLANNING[(target, kind)])


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_prediction_inputs_flag_the_corrupt_case_and_keep_the_others(tiny_raw, tmp_path, kind):
    outcome, message, case, others = prediction_outcome(tiny_raw, tmp_path, kind)
    assert others == [None] * len(others)
    _check(outcome, message, case, PREDICTION[kind])


def test_the_fuzz_covers_every_corruption_in_every_stage():
    assert set(PLANNING) == {(t, k) for t in ("image", "label") for k in CORRUPTIONS}
    assert set(PREDICTION) == set(CORRUPTIONS) and len(CORRUPTIONS) >= 17


REASONS = (  # message fragment -> the short reason shown in the fuzz matrix
    (r"is empty \(0 bytes\)", "empty file"),
    (r"gzip stream is truncated or corrupt", "gzip stream truncated/corrupt (CRC, length)"),
    (r"header cannot be read", "unreadable NIfTI header"),
    (r"invalid shape", "invalid shape in header"),
    (r"is truncated: its header promises", "header promises more data than the file holds"),
    (r"declares \d+ channel", "not one 3D volume: channel-count message"),
    (r"one 3D volume", "not one 3D volume"),
    (r"not declared in dataset.json", "undeclared label values"),
    (r"resample the label", "image/label size mismatch"),
)


def _short(outcome: str, message: str) -> str:
    if outcome != "error":
        return outcome + (" (valid image, read exactly as stored)" if outcome == ACCEPT else "")
    reason = next((r for pattern, r in REASONS if re.search(pattern, message)), "other")
    return f"named error: {reason}"


def fuzz_matrix() -> str:
    """The fuzz matrix as a markdown table (corruption x stage -> outcome, with the start of each message)."""
    rows = ["| corruption | planning: image | planning: label | prediction input: image |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        template = make_template(Path(d) / "template")
        for n, kind in enumerate(sorted(CORRUPTIONS)):
            cells = []
            for target in ("image", "label"):
                work = Path(d) / f"p{n}{target}"
                work.mkdir()
                cells.append(_short(*planning_outcome(template, work, kind, target)[:2]))
            work = Path(d) / f"i{n}"
            work.mkdir()
            cells.append(_short(*prediction_outcome(template, work, kind)[:2]))
            rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)
    sys.stdout.write(fuzz_matrix() + "\n")
