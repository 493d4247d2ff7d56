"""The single-node SLURM test cluster really schedules: batch jobs, dependencies, cancellation, refusals, submitit.

Every job here is a real SLURM job run by the slurmd of the ``slurm_cluster`` fixture; state comes from squeue
(no accounting), results from files the jobs write. The whole file takes well under a minute.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import submitit

import slurm_cluster as cluster_module
from slurm_cluster import SlurmCluster, SlurmUnavailable

DONE = 60  # seconds a test waits for its jobs (they take 1-3 s each)


def read_float(path):
    return float(path.read_text(encoding="utf-8").split()[-1])


def test_fixture_points_the_session_at_the_cluster(slurm_cluster):
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf) == slurm_cluster.env["SLURM_CONF"]
    assert slurm_cluster.partition == "debug"
    conf = slurm_cluster.conf.read_text(encoding="utf-8")
    assert "/etc/" not in conf  # everything lives in the fixture's temporary folder
    info = slurm_cluster.run("sinfo", "-h", "-o", "%P|%a|%l|%D|%t")
    assert info.returncode == 0, info.stderr
    assert info.stdout.split() == ["debug*|up|infinite|1|idle"]
    assert (slurm_cluster.log_dir / "slurmctld.log").stat().st_size > 0


def test_sbatch_wrap_runs_and_two_one_cpu_jobs_share_the_node(slurm_cluster, tmp_path):
    jobs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.txt"
        script = f"echo $SLURM_JOB_ID $(date +%s.%N) > {out}; sleep 2; date +%s.%N >> {out}"
        jobs.append(slurm_cluster.sbatch("-c", "1", "--mem=200M", "-o", str(tmp_path / f"{name}.log"),
                                         "--wrap", script))
    states = slurm_cluster.wait_all_done(DONE, job_ids=jobs)
    assert states == {jobs[0]: "COMPLETED", jobs[1]: "COMPLETED"}
    spans = []
    for name, job in zip(("a", "b"), jobs):
        first, second = (tmp_path / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        job_id, start = first.split()
        assert job_id == job  # the file was written by that very job
        spans.append((float(start), float(second)))
        assert float(second) - float(start) >= 2.0
    if int(slurm_cluster.run("sinfo", "-h", "-o", "%c").stdout.strip() or 1) >= 2:
        # one CPU each on a node with two or more: they ran at the same time, not one after the other
        assert max(s for s, _ in spans) < min(e for _, e in spans), spans


def test_afterok_child_runs_only_after_its_parent_succeeded(slurm_cluster, tmp_path):
    parent_end, child_start = tmp_path / "parent_end", tmp_path / "child_start"
    parent = slurm_cluster.sbatch("-o", "/dev/null", "--wrap", f"sleep 2; date +%s.%N > {parent_end}")
    child = slurm_cluster.sbatch("-o", "/dev/null", f"--dependency=afterok:{parent}", "--kill-on-invalid-dep=yes",
                                 "--wrap", f"date +%s.%N > {child_start}")
    assert slurm_cluster.job_state(child) == "PENDING"
    reason = slurm_cluster.run("squeue", "-h", "-j", child, "-o", "%r").stdout.strip()
    assert reason == "Dependency"
    states = slurm_cluster.wait_all_done(DONE, job_ids=[parent, child])
    assert states == {parent: "COMPLETED", child: "COMPLETED"}
    assert read_float(child_start) >= read_float(parent_end)


def test_failed_parent_leaves_the_afterok_child_never_run(slurm_cluster, tmp_path):
    ran = tmp_path / "child_ran"
    parent = slurm_cluster.sbatch("-o", "/dev/null", "--wrap", "sleep 1; exit 3")
    child = slurm_cluster.sbatch("-o", "/dev/null", f"--dependency=afterok:{parent}", "--kill-on-invalid-dep=yes",
                                 "--wrap", f"touch {ran}")
    states = slurm_cluster.wait_all_done(DONE, job_ids=[parent, child])
    assert states == {parent: "FAILED", child: "CANCELLED"}
    exit_code = slurm_cluster.run("scontrol", "show", "job", parent, "-o").stdout
    assert "ExitCode=3:0" in exit_code
    assert not ran.exists()


def test_scancel_stops_a_running_job(slurm_cluster, tmp_path):
    started, finished = tmp_path / "started", tmp_path / "finished"
    job = slurm_cluster.sbatch("-o", "/dev/null", "--wrap", f"touch {started}; sleep 120; touch {finished}")
    slurm_cluster.wait_state(job, {"RUNNING"}, timeout=DONE)
    deadline = time.monotonic() + 15
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists()
    t0 = time.monotonic()
    res = slurm_cluster.run("scancel", job)
    assert res.returncode == 0, res.stderr
    assert slurm_cluster.wait_state(job, {"CANCELLED"}, timeout=30) == "CANCELLED"
    assert time.monotonic() - t0 < 15
    time.sleep(0.5)
    assert not finished.exists()


def test_sbatch_to_a_missing_partition_fails_with_slurms_message(slurm_cluster, tmp_path):
    before = set(slurm_cluster.squeue_states())
    res = slurm_cluster.run("sbatch", "-p", "no_such_partition", "--wrap", f"touch {tmp_path / 'ran'}")
    assert res.returncode != 0
    assert "invalid partition" in res.stderr.lower(), res.stderr
    assert set(slurm_cluster.squeue_states()) == before  # nothing was queued
    with pytest.raises(RuntimeError, match="(?i)invalid partition"):
        slurm_cluster.sbatch("-p", "no_such_partition", "--wrap", "true")


def test_submitit_job_returns_its_result(slurm_cluster, tmp_path):
    def work(n):  # a local function: cloudpickle ships it by value to the job
        return sum(i * i for i in range(n)), os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_CPUS_PER_TASK")

    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(partition=slurm_cluster.partition, time=5, mem="500M", cpus_per_task=1)
    job = executor.submit(work, 10)
    # no sacct here: wait on squeue first, so that a job dying without a result fails instead of hanging
    state = slurm_cluster.wait_all_done(DONE, job_ids=[job.job_id])[job.job_id]
    stderr = job.paths.stderr.read_text(encoding="utf-8") if job.paths.stderr.exists() else ""
    # e.g. submitit 1.5.x imports pkg_resources inside the job: setuptools >= 82 no longer ships it
    assert state == "COMPLETED", f"submitit job {state}; its stderr ends with:\n{stderr[-600:]}"
    assert job.result() == (285, job.job_id, "1")


def test_missing_programs_are_a_reason_to_skip_not_a_crash(monkeypatch):
    monkeypatch.setattr(cluster_module, "find_programs", lambda: {"sbatch": "/usr/bin/sbatch"})
    with pytest.raises(SlurmUnavailable, match="not found: munged, slurmctld, slurmd, squeue"):
        SlurmCluster.start(install=False)


@pytest.mark.slurm
def test_a_daemon_that_cannot_start_is_reported_with_its_log_and_everything_stops(monkeypatch):
    try:
        cluster_module.require_programs(install=False)
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    # slurmctld refuses to run on a host that is not its SlurmctldHost (the hostname trap)
    write_conf = cluster_module.slurm_conf_text
    monkeypatch.setattr(cluster_module, "slurm_conf_text", lambda root, node, *a: write_conf(root, node, *a).replace(
        f"SlurmctldHost={node}(", "SlurmctldHost=not-this-host("))
    root = Path(tempfile.mkdtemp(prefix="neonet-slurm-fail-"))  # munged wants world-searchable parent folders
    t0 = time.monotonic()
    with pytest.raises(SlurmUnavailable) as info:
        SlurmCluster.start(root=root, timeout=20)
    assert time.monotonic() - t0 < 20  # the dead daemon is noticed, not waited for
    message = str(info.value)
    assert "slurmctld exited" in message
    assert "not a valid controller" in message  # slurmctld's own log line, in the skip reason
    assert not root.exists()
    mine = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(root) in _cmdline(p)]
    assert mine == []  # munged (and anything else started from that folder) was stopped


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
