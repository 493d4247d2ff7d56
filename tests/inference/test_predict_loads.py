"""``NeoNetPredictor`` reads each model checkpoint once: every NeoSeg fold and every NeoCls fold file is
``torch.load``-ed exactly one time (the safety check is that one ``weights_only`` load; issue 22)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from e2e_models import DS


def test_predictor_loads_each_checkpoint_once(trained, monkeypatch):
    from neonet_toolkit.inference.predict import NeoNetPredictor
    from neonet_toolkit.utilities.identifiers import FINAL_CHECKPOINT, stage_fold_folder

    loads: Counter = Counter()
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads[str(Path(f).resolve()) if isinstance(f, (str, Path)) else repr(f)] += 1
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    predictor = NeoNetPredictor(DS, seg_model=trained["seg_model"], cls_run=trained["cls_run"], folds=[0],
                                device="cpu")
    seg_files = [trained["seg_model"] / f"fold_{f}" / FINAL_CHECKPOINT for f in predictor.seg_folds]
    cls_files = [stage_fold_folder(predictor.dataset_name, trained["cls_run"], f) / FINAL_CHECKPOINT
                 for f, _, _ in predictor.classifiers]
    assert len(seg_files) == 1 and len(cls_files) == 1
    assert all(f.is_file() for f in seg_files + cls_files)
    assert loads == Counter({str(f.resolve()): 1 for f in seg_files + cls_files})
