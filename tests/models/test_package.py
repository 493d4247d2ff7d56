"""Model packages on small hand-made folders: verification, hostile input (zip slip, absolute paths, links, a changed
byte in any file, extra and missing files, planted pickles, another major version), install (conflicts,
``overwrite``, all-or-nothing) and ``opened_package``'s environment. The end-to-end export → install → predict test
with trained models is tests/inference/test_model_package.py."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from neonet_toolkit.models import package as pk
from neonet_toolkit.models.package import (
    MANIFEST,
    PackageError,
    install_model,
    opened_package,
    verify_package,
)
from neonet_toolkit.utilities.checkpoints import load_verified_checkpoint
from neonet_toolkit.version import __version__

DS = "Dataset907_Pkg"
SEG = f"nnUNet_results/{DS}/NeoSegTrainer__NeoNetPlans__3d_fullres"
RUN = "cls_pattennet_0_esnested"
CLS = f"neonet_results/{DS}/{RUN}__NeoNetPlans/fold_0"


class _Planted:
    """What an attacker pickles: loading it with weights_only=False creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _seg_checkpoint(path: Path, value: float = 0.0) -> None:
    torch.save({"network_weights": {"w": torch.full((2,), value)}, "init_args": {"configuration": "3d_fullres"},
                "trainer_name": "NeoSegTrainer", "logging": {"train_losses": [np.float64(0.3)]},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, path)


def _cls_checkpoint(path: Path) -> None:
    torch.save({"network": {"w": torch.ones(3)}, "extra": {"finished": True, "inference": {"threshold": 0.4}}}, path)


def _sha(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _write_manifest(root: Path, **over) -> dict:
    files = {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*"))
             if p.is_file() and not p.is_symlink() and p.name != MANIFEST}
    manifest = {"format": pk.FORMAT, "format_version": pk.FORMAT_VERSION, "toolkit_version": __version__,
                "dataset_name": DS, "plans_name": "NeoNetPlans", "seg_model": SEG, "seg_folds": [0],
                "cls_run": RUN, "cls_folds": [0], "folds": None, "files": files, **over}
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return manifest


def _package_folder(root: Path, seg_value: float = 0.0) -> Path:
    """A minimal package folder: a NeoSeg model folder, a classifier fold, one preprocessed file, a card."""
    (root / SEG / "fold_0").mkdir(parents=True)
    (root / SEG / "plans.json").write_text('{"configurations": {"3d_fullres": {}}}', encoding="utf-8")
    (root / SEG / "dataset.json").write_text('{"labels": {"background": 0, "liver": 1, "tumor": 2}}', encoding="utf-8")
    _seg_checkpoint(root / SEG / "fold_0" / "checkpoint_final.pth", seg_value)
    (root / CLS).mkdir(parents=True)
    _cls_checkpoint(root / CLS / "checkpoint_final.pth")
    (root / CLS / "cls_summary.json").write_text('{"threshold": 0.4}', encoding="utf-8")
    (root / f"nnUNet_preprocessed/{DS}").mkdir(parents=True)
    (root / f"nnUNet_preprocessed/{DS}/dataset.json").write_text('{"labels": {}}', encoding="utf-8")
    (root / pk.MODEL_CARD).write_text("# card\n", encoding="utf-8")
    _write_manifest(root)
    return root


def _zip(folder: Path, target: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
        for info, data in extra:
            zf.writestr(info, data)
    return target


@pytest.fixture
def pkg(tmp_path):
    return _package_folder(tmp_path / "pkg")


def test_good_package_verifies_as_folder_and_zip(pkg, tmp_path):
    m = verify_package(pkg)
    assert m["dataset_name"] == DS and f"{SEG}/fold_0/checkpoint_final.pth" in m["files"]
    assert verify_package(_zip(pkg, tmp_path / "m.zip"))["files"] == m["files"]


def test_members_without_recorded_file_type_are_plain_files_but_devices_are_refused(pkg, tmp_path):
    z = tmp_path / "plain.zip"
    with zipfile.ZipFile(z, "w") as zf:  # writestr(name, ...) records permissions only (no S_IFREG)
        for p in sorted(pkg.rglob("*")):
            if p.is_file():
                zf.writestr(p.relative_to(pkg).as_posix(), p.read_bytes())
    assert verify_package(z)["dataset_name"] == DS
    info = zipfile.ZipInfo("neonet_results/fifo")
    info.external_attr = (stat.S_IFIFO | 0o600) << 16
    with pytest.raises(PackageError, match="'neonet_results/fifo' is not a regular file"):
        verify_package(_zip(pkg, tmp_path / "fifo.zip", extra=[(info, b"")]))


def test_opened_package_points_the_folders_at_the_package_and_restores(pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/somewhere/else")
    monkeypatch.delenv("neonet_results", raising=False)
    z = _zip(pkg, tmp_path / "m.zip")
    work = tmp_path / "work"
    with opened_package(z, work_folder=work) as ctx:
        assert ctx.root == (work / "package").resolve() and ctx.cls_run == RUN and ctx.folds is None
        assert os.environ["nnUNet_results"] == str(ctx.root / "nnUNet_results")
        assert os.environ["neonet_results"] == str(ctx.root / "neonet_results")
        assert (ctx.seg_model / "fold_0" / "checkpoint_final.pth").is_file()
    assert os.environ["nnUNet_results"] == "/somewhere/else" and "neonet_results" not in os.environ
    with opened_package(z) as ctx:  # default: a temporary folder, removed afterwards
        tmp_root = ctx.root
        assert tmp_root.is_dir()
    assert not tmp_root.exists()


@pytest.mark.parametrize("name", ["../x.txt", "nnUNet_results/../../x.txt", "/tmp/neonet_abs_x.txt",
                                  "C:/x.txt", "a\\..\\x.txt"])
def test_escaping_names_are_refused_before_anything_is_written(pkg, tmp_path, name):
    z = _zip(pkg, tmp_path / "evil.zip", extra=[(name, b"planted")])
    work = tmp_path / "deep" / "work"
    with pytest.raises(PackageError, match="absolute path|'\\.\\.'|backslash"):
        with opened_package(z, work_folder=work):
            pass
    assert not (tmp_path / "deep" / "x.txt").exists() and not (tmp_path / "x.txt").exists()
    assert not Path("/tmp/neonet_abs_x.txt").exists()
    assert not (work / "package").exists()  # nothing extracted is left behind


def test_symlinks_are_refused_in_zip_and_folder(pkg, tmp_path):
    info = zipfile.ZipInfo("neonet_results/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(pkg, tmp_path / "link.zip", extra=[(info, b"/etc/passwd")])
    with pytest.raises(PackageError, match="neonet_results/link.*symbolic link"):
        verify_package(z)
    (pkg / "neonet_results" / "link").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="'neonet_results/link' is a symbolic link"):
        verify_package(pkg)


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("index", range(7))
def test_a_changed_byte_in_any_file_is_refused_naming_it(tmp_path, index):
    folder = _package_folder(tmp_path / "pkg")
    names = [n for n in _all_files(folder) if n != MANIFEST]
    assert len(names) == 7
    name = names[index]
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=f"{name}.*sha256.*changed after export"):
        verify_package(folder)
    with pytest.raises(PackageError, match=f"{name}.*sha256"):
        verify_package(_zip(folder, tmp_path / "m.zip"))


def test_extra_and_missing_files_are_refused(pkg, tmp_path):
    (pkg / CLS / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(PackageError, match=f"'{CLS}/notes.txt' is not listed in manifest.json"):
        verify_package(pkg)
    with pytest.raises(PackageError, match="notes.txt' is not listed"):
        verify_package(_zip(pkg, tmp_path / "extra.zip"))
    (pkg / CLS / "notes.txt").unlink()
    (pkg / CLS / "cls_summary.json").unlink()
    with pytest.raises(PackageError, match=f"'{CLS}/cls_summary.json' listed in manifest.json is missing"):
        verify_package(pkg)
    with pytest.raises(PackageError, match="cls_summary.json' listed in manifest.json is missing"):
        verify_package(_zip(pkg, tmp_path / "missing.zip"))
    (pkg / MANIFEST).unlink()
    with pytest.raises(PackageError, match="no manifest.json"):
        verify_package(_zip(pkg, tmp_path / "nomanifest.zip"))


@pytest.mark.parametrize("where", ["seg", "cls"])
def test_planted_pickle_is_refused_by_the_allow_listed_loader_before_any_load(tmp_path, where):
    """The attacker also rewrites the manifest (hashes match): the checkpoint loaders must still refuse it."""
    folder = _package_folder(tmp_path / "pkg")
    marker = tmp_path / "PWNED"
    target = folder / (f"{SEG}/fold_0" if where == "seg" else CLS) / "checkpoint_final.pth"
    torch.save({"network_weights": _Planted(marker), "network": _Planted(marker)}, target)
    _write_manifest(folder)
    with pytest.raises(PackageError, match=r"checkpoint_final\.pth.*(references|Refused).*io\.open"):
        verify_package(folder)
    z = _zip(folder, tmp_path / "evil.zip")
    with pytest.raises(PackageError, match="io.open"):
        with opened_package(z, work_folder=tmp_path / "work"):
            pass
    assert not marker.exists(), "the planted code ran"
    assert not (tmp_path / "work" / "package").exists()


def test_install_of_a_hostile_zip_changes_nothing(pkg, tmp_path, isolated_env):
    z = _zip(pkg, tmp_path / "slip.zip", extra=[("../../slipped.txt", b"planted")])
    with pytest.raises(PackageError, match="zip slip"):
        install_model(z)
    assert _snapshot(isolated_env) == {} and not (tmp_path / "slipped.txt").exists()
    assert [p.name for r in ("nnUNet_results", "neonet_results", "nnUNet_preprocessed")
            for p in (isolated_env / r).iterdir()] == []


def test_package_from_another_major_version_names_both_versions(tmp_path):
    major = int(__version__.split(".")[0]) + 1
    folder = _package_folder(tmp_path / "pkg")
    _write_manifest(folder, toolkit_version=f"{major}.0.0")
    with pytest.raises(PackageError, match=rf"made with neonet_toolkit {major}\.0\.0 \(major version {major}\), "
                                           rf"this is neonet_toolkit {__version__}"):
        verify_package(_zip(folder, tmp_path / "m.zip"))
    _write_manifest(folder, toolkit_version=f"{__version__.split('.')[0]}.99.0")  # same major: accepted
    assert verify_package(folder)["toolkit_version"].endswith(".99.0")


def _installed_seg(env_root: Path) -> Path:
    return env_root / SEG / "fold_0" / "checkpoint_final.pth"


def test_install_then_overwrite_is_refused_then_replaces(isolated_env, tmp_path):
    v1 = _zip(_package_folder(tmp_path / "v1", seg_value=1.0), tmp_path / "v1.zip")
    v2 = _zip(_package_folder(tmp_path / "v2", seg_value=2.0), tmp_path / "v2.zip")
    m = install_model(v1)
    f = _installed_seg(isolated_env)
    assert m["dataset_name"] == DS and _sha(f) == m["files"][f"{SEG}/fold_0/checkpoint_final.pth"]
    assert (isolated_env / CLS / "cls_summary.json").is_file()
    assert (isolated_env / f"neonet_results/{DS}/installed_model__NeoNetPlans/manifest.json").is_file()
    before = f.read_bytes()
    # the user's other files in the dataset folders are never touched
    (isolated_env / f"neonet_results/{DS}/mine.txt").write_text("keep", encoding="utf-8")
    assert install_model(v1)["dataset_name"] == DS  # the same package again: nothing differs, no --overwrite needed
    with pytest.raises(PackageError, match="would replace .* existing part.*--overwrite"):
        install_model(v2)
    assert f.read_bytes() == before
    install_model(v2, overwrite=True)
    assert load_verified_checkpoint(f)["network_weights"]["w"][0].item() == 2.0
    assert (isolated_env / f"neonet_results/{DS}/mine.txt").read_text(encoding="utf-8") == "keep"
    leftovers = [p for r in ("nnUNet_results", "neonet_results", "nnUNet_preprocessed")
                 for p in (isolated_env / r).rglob("*") if ".neonet_install_" in p.name or ".replaced_" in p.name]
    assert leftovers == []


def _snapshot(env_root: Path) -> dict[str, bytes]:
    """Every file under the four result roots (what an install may change)."""
    return {p.relative_to(env_root).as_posix(): p.read_bytes() for r in ("nnUNet_raw", "nnUNet_preprocessed",
            "nnUNet_results", "neonet_results") for p in (env_root / r).rglob("*") if p.is_file()}


def test_failed_install_leaves_the_old_model_intact(isolated_env, tmp_path, monkeypatch):
    v1 = _zip(_package_folder(tmp_path / "v1", seg_value=1.0), tmp_path / "v1.zip")
    v2_folder = _package_folder(tmp_path / "v2", seg_value=2.0)
    install_model(v1)
    f = _installed_seg(isolated_env)
    before = _snapshot(isolated_env)
    # 1. a hostile package: refused during staging, nothing changed
    bad = bytearray((v2_folder / CLS / "cls_summary.json").read_bytes())
    (v2_folder / CLS / "cls_summary.json").write_bytes(bytes(bad) + b" ")
    with pytest.raises(PackageError, match="cls_summary.json"):
        install_model(_zip(v2_folder, tmp_path / "bad.zip"), overwrite=True)
    # 2. a good package whose commit fails half-way (the third rename): rolled back
    _write_manifest(v2_folder)
    calls = {"n": 0}
    real_replace = os.replace

    def flaky(a, b):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_replace(a, b)

    monkeypatch.setattr(pk.os, "replace", flaky)
    with pytest.raises(OSError, match="No space"):
        install_model(_zip(v2_folder, tmp_path / "v2.zip"), overwrite=True)
    monkeypatch.setattr(pk.os, "replace", real_replace)
    after = _snapshot(isolated_env)
    assert after == before and len(before) == 8  # 6 model files + the installed manifest and card
    assert load_verified_checkpoint(f)["network_weights"]["w"][0].item() == 1.0


def test_install_cli_refuses_a_tampered_zip_with_a_clear_message(pkg, tmp_path, isolated_env):
    (pkg / CLS / "extra.bin").write_bytes(b"x")
    z = _zip(pkg, tmp_path / "m.zip")
    env = {**os.environ, "NEONET_JOBS": "4", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "neonet_toolkit.run.install_model", str(z)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "extra.bin' is not listed in manifest.json" in r.stderr
    assert not (isolated_env / "neonet_results" / DS).exists()


def test_model_card_states_the_manifest_numbers():
    from neonet_toolkit.models.model_card import render

    base = {"dataset_name": DS, "seg_model": SEG, "seg_folds": [0, 1], "cls_run": RUN, "cls_folds": [0, 1],
            "training_data": {"n_cases": 40, "n_labelled": 40, "n_positive": 14, "prevalence": 0.35,
                              "spacing_min": [2.5, 0.7, 0.7], "spacing_median": [3.0, 0.8, 0.8],
                              "spacing_max": [5.0, 0.9, 0.9]},
            "calibration": {"0": {"calibration": {"method": "platt", "a": 1.25, "b": -0.5}, "threshold": 0.41,
                                  "threshold_method": "youden", "threshold_source": "nested_inner_oof"}},
            "performance": {"auc": {"auc": 0.7345, "ci_low": 0.5811, "ci_high": 0.8879}, "n": 40, "n_positive": 14,
                            "folds": [0, 1], "brier": 0.2}}
    card = render(base)
    assert "Research use only" in card and "hepatobiliary-phase (HBP)" in card
    assert "PNI-positive: 14 of 40 (prevalence 0.350)" in card
    assert "min 2.50 × 0.70 × 0.70, median 3.00 × 0.80 × 0.80, max 5.00 × 0.90 × 0.90" in card
    assert "AUC 0.735 (95 % CI 0.581 to 0.888, DeLong)" in card
    assert "| 0 | platt (a=1.250, b=-0.500) | 0.410 | youden | nested_inner_oof |" in card
    one_class = render({**base, "performance": {"auc": None, "auc_note": "undefined: one class only"}})
    assert "AUC: undefined: one class only" in one_class and "DeLong" not in one_class
