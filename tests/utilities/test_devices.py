"""The CPU thread rule and the trainers' time estimate."""
import os
import subprocess
import sys

import pytest

from neonet_toolkit.training.base import time_estimate
from neonet_toolkit.utilities.devices import thread_rule


def test_thread_rule_shares_the_cores_and_the_user_wins():
    assert thread_rule({}, cores=2) == {"cores": 2, "jobs": 1, "threads": 2, "intra_op_threads": 2,
                                        "nnunet_da_workers": 1}
    r = thread_rule({"NEONET_JOBS": "2"}, cores=2)  # two jobs side by side: one thread each, one DA worker
    assert (r["threads"], r["intra_op_threads"], r["nnunet_da_workers"]) == (1, 1, 1)
    r = thread_rule({"NEONET_JOBS": "4"}, cores=16)
    assert (r["threads"], r["intra_op_threads"], r["nnunet_da_workers"]) == (4, 4, 3)
    r = thread_rule({"NEONET_JOBS": "4", "OMP_NUM_THREADS": "7", "nnUNet_n_proc_DA": "0"}, cores=16)
    assert (r["intra_op_threads"], r["nnunet_da_workers"]) == (7, 1)
    with pytest.raises(ValueError, match="NEONET_JOBS='two'"):
        thread_rule({"NEONET_JOBS": "two"}, cores=2)


def test_console_command_applies_the_rule_to_its_own_process():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "nnUNet_n_proc_DA")}
    env["NEONET_JOBS"] = "64"  # more jobs than cores: one thread each
    code = ("import os, torch; from neonet_toolkit.run.common import setup_logging; setup_logging(); "
            "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], os.environ['nnUNet_n_proc_DA'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1", "1"]


def test_time_estimate_uses_the_latest_epochs():
    hist = [{"epoch_time_s": 9.0}, {"epoch_time_s": 1.0}, {"epoch_time_s": 1.2}, {"epoch_time_s": 0.8}]
    line = time_estimate(hist, 30, "vae")
    assert "1.0 s/epoch" in line and "30 epoch(s) left ≈ 0.5 min" in line


def test_torchrun_with_one_process_still_runs_the_process_group(monkeypatch):
    import torch

    from neonet_toolkit.utilities.devices import Distributed

    for k in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not Distributed(torch.device("cpu")).enabled  # plain python: no process group
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "t")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    d = Distributed(torch.device("cpu"))
    assert d.enabled
    d.init()
    try:
        assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
        net = d.wrap(torch.nn.Linear(3, 1))
        assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
        net(torch.ones(2, 3)).sum().backward()
        assert d.mean(3.0) == 3.0 and d.shard([1, 2, 3]) == [1, 2, 3]
    finally:
        d.close()
    assert not torch.distributed.is_initialized()
