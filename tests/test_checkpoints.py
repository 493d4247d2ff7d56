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
