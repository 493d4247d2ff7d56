"""Checkpoint writes are atomic: a failed write (e.g. disk full) keeps the previous checkpoint and
leaves no partial file behind; loading is weights_only."""
from __future__ import annotations

import pytest
import torch


def test_failed_checkpoint_write_keeps_previous_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from neonet_toolkit.training import base

    path = tmp_path / "fold_0" / "checkpoint_latest.pth"
    base.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def disk_full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(base.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        base.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint_latest.pth"]
    state = base.load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


# ----------------------------------------------------------------------------- checkpoints handed to nnU-Net
class _Planted:
    """What an attacker pickles: loading it with weights_only=False creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _nnunet_like_checkpoint(path):
    import numpy as np

    torch.save({"network_weights": {"w": torch.zeros(2)}, "optimizer_state": {"state": {}, "param_groups": []},
                "grad_scaler_state": None,
                "logging": {"train_losses": [np.float64(0.3)], "dice_per_class_or_region": [[np.float32(0.5)]]},
                "_best_ema": np.float64(0.4), "current_epoch": 2,
                "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "dataset_json": {},
                              "device": torch.device("cpu")},
                "trainer_name": "NeoSegTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}, path)


def _model_folder(root, checkpoint_writer):
    folder = root / "NeoSegTrainer__NeoNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}", encoding="utf-8")
    (folder / "dataset.json").write_text("{}", encoding="utf-8")
    checkpoint_writer(folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_planted_pickle_in_a_model_folder_is_refused_without_running(tmp_path, caplog):
    from neonet_toolkit.models.seg import check_model_folder
    from neonet_toolkit.utilities.checkpoints import UnsafeCheckpointError

    marker = tmp_path / "PWNED"
    folder = _model_folder(tmp_path / "evil", lambda p: torch.save({"network_weights": _Planted(marker)}, p))
    with pytest.raises(UnsafeCheckpointError, match=r"fold_0/checkpoint_final\.pth references \['io\.open'\]"):
        check_model_folder(folder, [0])
    assert not marker.exists()
    # --trust-checkpoints: the check is skipped (and said so); nothing is loaded by the check itself
    check_model_folder(folder, [0], trust_checkpoints=True)
    assert not marker.exists() and "--trust-checkpoints" in caplog.text


def test_nnunet_style_checkpoint_passes_and_corrupt_file_is_named(tmp_path):
    from neonet_toolkit.models.seg import check_model_folder
    from neonet_toolkit.utilities.checkpoints import UnsafeCheckpointError, verify_checkpoint

    folder = _model_folder(tmp_path / "ok", _nnunet_like_checkpoint)
    assert check_model_folder(folder, [0]) == folder
    bad = tmp_path / "truncated.pth"
    bad.write_bytes((folder / "fold_0" / "checkpoint_final.pth").read_bytes()[:100])
    with pytest.raises(UnsafeCheckpointError, match="truncated.pth"):
        verify_checkpoint(bad)


def test_upstream_hash_mismatch_is_refused(tmp_path):
    from neonet_toolkit.utilities.checkpoints import UpstreamMismatchError, check_upstream, upstream_record

    vae = tmp_path / "vae.pth"
    torch.save({"w": torch.ones(2)}, vae)
    rec = upstream_record({"vae": vae})
    check_upstream(rec, {"vae": vae}, "LDM fold 0", "Retrain it.")  # unchanged: fine
    torch.save({"w": torch.zeros(2)}, vae)  # the VAE was retrained
    with pytest.raises(UpstreamMismatchError, match=r"LDM fold 0 was built on vae .* Retrain it\."):
        check_upstream(rec, {"vae": vae}, "LDM fold 0", "Retrain it.")


def test_synthetic_set_from_a_superseded_model_is_refused(tmp_path):
    """generation manifest -> NeoCls: the set records the SHA-1 of the ControlNet (and its VAE/LDM) that made
    it; a retrained VAE is named with both files and the fix; a deleted model is not a mismatch."""
    import hashlib

    from neonet_toolkit.utilities.checkpoints import UpstreamMismatchError, check_synthetic_set

    files = {k: tmp_path / f"{k}.pth" for k in ("controlnet", "vae", "ldm")}
    for k, f in files.items():
        torch.save({k: torch.ones(2)}, f)
    sha1 = {k: hashlib.sha1(f.read_bytes()).hexdigest() for k, f in files.items()}
    manifest = {"settings": {"checkpoint": str(files["controlnet"]), "checkpoint_sha1": sha1["controlnet"],
                             "upstream_sha1": {"vae": sha1["vae"], "ldm": sha1["ldm"]}}}
    check_synthetic_set(manifest, tmp_path / "manifest.json", files, "NeoCls run fold 0", "Regenerate it.")
    torch.save({"vae": torch.zeros(2)}, files["vae"])  # the VAE was retrained after generation
    with pytest.raises(UpstreamMismatchError, match=r"NeoCls run fold 0: the synthetic set .*manifest\.json was "
                       r"generated with a vae checkpoint of sha1 " + sha1["vae"][:12] + r".*vae\.pth now has sha1 .*"
                       r"Regenerate it\."):
        check_synthetic_set(manifest, tmp_path / "manifest.json", files, "NeoCls run fold 0", "Regenerate it.")
    files["vae"].unlink()  # models deleted once the set was made: nothing to compare, not refused
    check_synthetic_set(manifest, tmp_path / "manifest.json", files, "NeoCls run fold 0", "Regenerate it.")


def test_move_aside_keeps_previous_results(tmp_path):
    from neonet_toolkit.utilities.identifiers import fold_folders
    from neonet_toolkit.utilities.io import move_aside

    fold = tmp_path / "vae__NeoNetPlans" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"old")
    aside = move_aside(fold)
    assert not fold.exists() and (aside / "checkpoint_final.pth").read_bytes() == b"old"
    assert fold_folders(tmp_path / "vae__NeoNetPlans") == {}  # never taken for a fold
    # nnU-Net model folds are moved out of nnU-Net's fold_* pattern (it would parse "0.replaced-…" as a fold)
    seg_fold = tmp_path / "NeoSegTrainer__NeoNetPlans__3d_fullres" / "fold_0"
    seg_fold.mkdir(parents=True)
    aside = move_aside(seg_fold, prefix="old-")
    assert aside.name.startswith("old-fold_0.replaced-") and not seg_fold.exists()


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from neonet_toolkit.utilities.io import save_json

    old = os.umask(0o022)
    try:
        save_json({"a": 1}, tmp_path / "x.json")
        assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        save_json({"a": 1}, tmp_path / "y.json")
        assert (tmp_path / "y.json").stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)
