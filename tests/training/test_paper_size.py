"""gpu_full at the paper's size (96×96×48 crop, SwinUNETR fs48): one optimizer step of every stage on CPU."""
import pytest

from neonet_toolkit.training.paper_size import STAGES, step_stage


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_one_paper_size_step(stage):
    r = step_stage(stage, "cpu", batch=1 if stage == "seg" else None)  # NeoSeg batch 1: fits a 24 GiB machine
    assert r["step_s"] > 0 and r["trainable_params"] > 0
    if stage in ("ldm", "controlnet"):
        assert r["latent_shape"] == [4, 12, 24, 24]
    if stage == "pattennet":
        assert r["frozen_tensors"] > 0


def test_paper_size_step_rejects_unknown_stage():
    with pytest.raises(ValueError, match="Unknown stage"):
        step_stage("vqgan")
