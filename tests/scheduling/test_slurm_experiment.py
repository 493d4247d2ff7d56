"""The experiment's fold-0 graph through a real single-node SLURM cluster (slurm-wlm + munge, started by the fixture):
the same results as the local launcher, and a job killed with scancel finishes from its checkpoint when launched
again."""
from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from neonet_toolkit.run.experiment import main as experiment
from neonet_toolkit.scheduling.launchers import SLURM_JOBS_FILE
from neonet_toolkit.utilities.identifiers import ResultLayout

logger = logging.getLogger(__name__)
# ~6 min of training jobs under SLURM on 2 cores (skipped with the reason where slurm-wlm/munge are missing)
ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")
TEST_SIZE = ["--epochs", "2", "--stage-args", "seg=--iterations 2 --val-iterations 1", "-device", "cpu",
             "--allow-failed-gate"]
SLURM_ARGS = ["--launcher", "slurm", "--slurm-gpus", "0", "--slurm-time", "30", "--slurm-mem", "3G", "--slurm-cpus",
              "1", "--wait"]


def _copy_dataset(planned: dict, root: Path, monkeypatch) -> Path:
    """The planned phantom (raw + preprocessed) in fresh folders; the path variables point there."""
    for k in ENV_KEYS:
        (root / k).mkdir(parents=True)
        monkeypatch.setenv(k, str(root / k))
    name = planned["dataset_name"]
    shutil.copytree(planned["raw"], root / "nnUNet_raw" / name)
    shutil.copytree(planned["preprocessed"], root / "nnUNet_preprocessed" / name)
    return root


def _files(root: Path) -> set[str]:
    """Result files, relative, without run-specific names (nnU-Net's time-stamped logs, the run folder)."""
    out = set()
    for sub in ("nnUNet_results", "neonet_results"):
        for f in (root / sub).rglob("*"):
            rel = f.relative_to(root).as_posix()
            if f.is_file() and "experiment__" not in rel and "/training_log_" not in rel and "__pycache__" not in rel:
                out.add(rel)
    return out


def _oof(root: Path) -> list[tuple[str, str]]:
    f = next((root / "neonet_results").rglob("cls_pattennet_1_esnested__*/fold_0/oof_predictions.csv"))
    with open(f, encoding="utf-8") as fh:
        return [(r["case_id"], r["probability"]) for r in csv.DictReader(fh)]


def _auc(root: Path) -> tuple:
    run = json.loads(next((root / "neonet_results").rglob("cls_evaluation__*/summary.json")).read_text(encoding="utf-8"))["runs"][
        "cls_pattennet_1_esnested"]
    return run["pooled_delong"], run["fold_results"]


def test_fold0_graph_on_slurm_equals_local(planned_phantom, slurm_cluster, tmp_path, monkeypatch, capsys):
    grid = ["501", "--archs", "pattennet", "--ratios", "1", "--folds", "0", *TEST_SIZE]
    local = _copy_dataset(planned_phantom, tmp_path / "local", monkeypatch)
    t0 = time.perf_counter()
    assert experiment(grid) == 0
    t_local = time.perf_counter() - t0

    remote = _copy_dataset(planned_phantom, tmp_path / "slurm", monkeypatch)
    t0 = time.perf_counter()
    assert experiment(grid + SLURM_ARGS) == 0
    t_slurm = time.perf_counter() - t0
    run_dir = ResultLayout.for_dataset(501).experiment_folder
    jobs = json.loads((run_dir / SLURM_JOBS_FILE).read_text(encoding="utf-8"))
    assert sorted(jobs) == sorted(["seg/0", "masks/0", "vae/0", "ldm/0", "controlnet/0", "generate/0", "quality/0",
                                   "cls/cls_pattennet_1_esnested/0", "evaluate"])
    assert len({v["job_id"] for v in jobs.values()}) == len(jobs)  # one SLURM job per graph job
    # each job ran under SLURM: its status names the SLURM job id it ran as, its log is in the run folder
    for name, v in jobs.items():
        st = json.loads((run_dir / "status" / (name.replace("/", "__") + ".json")).read_text(encoding="utf-8"))
        assert st["state"] == "finished" and st["slurm_job_id"] == v["job_id"], (name, st)
        assert (run_dir / "logs" / (name.replace("/", "__") + ".log")).stat().st_size > 0
    # same files, same out-of-fold predictions, same evaluation
    assert _files(local) and {f.split("/", 1)[1] for f in _files(local)} == {f.split("/", 1)[1] for f in _files(remote)}
    assert _oof(local) == _oof(remote)
    assert _auc(local) == _auc(remote)
    # the scheduler saw the dependencies: a job never started before what it waits for had ended
    ended = {n: json.loads((run_dir / "status" / (n.replace("/", "__") + ".json")).read_text(encoding="utf-8")) for n in jobs}
    assert ended["ldm/0"]["started"] >= ended["vae/0"]["ended"]
    assert ended["evaluate"]["started"] >= ended["cls/cls_pattennet_1_esnested/0"]["ended"]
    # launching again submits nothing: every job is finished
    assert experiment(grid + SLURM_ARGS) == 0
    assert "submitted 0 SLURM jobs" in capsys.readouterr().out
    logger.warning("fold-0 graph: %d jobs; local %.0f s, SLURM %.0f s (SLURM jobs %s)", len(jobs), t_local, t_slurm,
                   " ".join(v["job_id"] for v in jobs.values()))


def test_scancel_then_resubmit_continues_from_checkpoint(planned_phantom, slurm_cluster, tmp_path, monkeypatch,
                                                         capsys):
    root = _copy_dataset(planned_phantom, tmp_path / "c", monkeypatch)
    grid = ["501", "--archs", "pattennet", "--ratios", "0", "--folds", "0", "--no-seg", "--no-evaluate",
            "--epochs", "2", "--stage-args", "vae=--epochs 60", "-device", "cpu"]
    submit = grid + SLURM_ARGS[:-1]  # no --wait: we cancel while it trains
    assert experiment(submit) == 0
    layout = ResultLayout.for_dataset(501)
    run_dir = layout.experiment_folder
    ids = {n: v["job_id"] for n, v in json.loads((run_dir / SLURM_JOBS_FILE).read_text(encoding="utf-8")).items()}
    assert sorted(ids) == ["cls/cls_pattennet_0_esnested/0", "vae/0"]
    latest = layout.fold_folder("vae", 0) / "checkpoint_latest.pth"
    deadline = time.monotonic() + 240
    while not latest.is_file():
        assert time.monotonic() < deadline, "the VAE job never wrote checkpoint_latest.pth"
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["scancel", ids["vae/0"]], check=True)
    slurm_cluster.wait_all_done(timeout=60, job_ids=list(ids.values()))
    assert not (layout.fold_folder("vae", 0) / "checkpoint_final.pth").is_file()
    assert slurm_cluster.job_state(ids["cls/cls_pattennet_0_esnested/0"]) in ("CANCELLED", None)  # never ran
    assert not layout.fold_folder("cls_pattennet_0_esnested", 0).exists()
    experiment(grid + ["--status"])
    status = capsys.readouterr().out
    row = next(line for line in status.splitlines() if line.startswith("| vae/0 |"))
    assert row.split("|")[2].strip() in ("not started", "failed"), row  # not running, queued or finished
    # launch again: the VAE continues from its checkpoint, then the classifier runs
    assert experiment(grid + SLURM_ARGS) == 0
    log = (layout.fold_folder("vae", 0) / "training_log.txt").read_text(encoding="utf-8")
    assert "resumed from checkpoint_latest.pth at epoch" in log
    epoch = int(log.split("resumed from checkpoint_latest.pth at epoch")[1].split()[0])
    assert 0 < epoch < 60
    assert (layout.fold_folder("vae", 0) / "checkpoint_final.pth").is_file()
    assert (layout.fold_folder("cls_pattennet_0_esnested", 0) / "checkpoint_final.pth").is_file()
    # the cancelled job's lock was released or broken as stale; nothing holds it now
    assert not (run_dir / "locks" / "vae__0.lock").exists()
    del root
