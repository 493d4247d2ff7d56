"""Run one graph job, wherever it was dispatched (this machine or a SLURM node).

:func:`run_job` takes the job's lock, skips it if it is already finished, runs its console command in a child
process (the same command ``--dry-run`` prints, with the CPU-thread rule and the GPU it was given), writes the
command's output to ``<run folder>/logs/<job>.log`` and its state to ``<run folder>/status/<job>.json``, and checks
afterwards that the job's finished rule now holds. Every stage command is called with ``--c``, so a job that is
started again (after a crash, a ``scancel`` or a pre-emption) continues from its last checkpoint.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from neonet_toolkit.scheduling.graph import Job, is_done
from neonet_toolkit.scheduling.locks import JobBusy, JobLock
from neonet_toolkit.utilities.devices import JOBS_ENV
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

#: console command -> module run with ``python -m`` (the same entry points setup.py installs)
COMMAND_MODULES = {"neonet_train": "neonet_toolkit.run.train", "neonet_generate": "neonet_toolkit.run.generate",
                   "neonet_evaluate": "neonet_toolkit.run.evaluate", "neonet_experiment": "neonet_toolkit.run.experiment"}
LOG_TAIL_LINES = 20


class JobFailed(RuntimeError):
    """The job's command failed (its log names why)."""


def safe_job_file(name: str) -> str:
    """A job name as a file name (``cls/cls_pattennet_1_esnested/0`` → ``cls__cls_pattennet_1_esnested__0``)."""
    return name.replace("/", "__")


def log_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "logs" / f"{safe_job_file(name)}.log"


def status_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "status" / f"{safe_job_file(name)}.json"


def lock_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "locks" / f"{safe_job_file(name)}.lock"


def read_status(run_dir: Path, name: str) -> dict | None:
    f = status_file(run_dir, name)
    return load_json(f) if f.is_file() else None


def log_tail(run_dir: Path, name: str, n: int = LOG_TAIL_LINES) -> list[str]:
    f = log_file(run_dir, name)
    if not f.is_file():
        return []
    return f.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]


def command_line(argv: list[str]) -> list[str]:
    """The child process for a console command: this interpreter with ``-m`` the entry point's module
    (``python ...`` runs this interpreter itself: a custom job)."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] not in COMMAND_MODULES:
        raise ValueError(f"job command {argv[0]!r} is not one of {sorted(COMMAND_MODULES)}")
    return [sys.executable, "-m", COMMAND_MODULES[argv[0]], *argv[1:]]


def job_environment(concurrent_jobs: int = 1, gpu: str | None = None, base: dict | None = None) -> dict:
    """The child's environment: the thread rule's ``NEONET_JOBS`` (concurrent jobs on this machine), and the one GPU
    it may see. Under SLURM the job's CPU allocation sets the threads (``SLURM_CPUS_PER_TASK``)."""
    env = dict(os.environ if base is None else base)
    env[JOBS_ENV] = str(max(1, int(concurrent_jobs)))
    if env.get("SLURM_CPUS_PER_TASK") and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def run_job(job: Job, run_dir: str | Path, concurrent_jobs: int = 1, gpu: str | None = None,
            stale_after_s: float | None = None) -> dict:
    """Run ``job`` once; returns its status record. Raises :class:`JobBusy` when another live launch holds the
    job, :class:`JobFailed` when its command fails or leaves the job unfinished."""
    run_dir = Path(run_dir)
    slurm_id = os.environ.get("SLURM_JOB_ID")
    lock = JobLock(lock_file(run_dir, job.name), **({} if stale_after_s is None else {"stale_after_s": stale_after_s}))
    if not lock.acquire({"job": job.name, "slurm_job_id": slurm_id}):
        holder = lock.holder() or {}
        raise JobBusy(f"job {job.name} is running in another launch ({holder.get('host')}, pid {holder.get('pid')}"
                      f"{', SLURM job ' + str(holder['slurm_job_id']) if holder.get('slurm_job_id') else ''}); "
                      f"its lock is {lock.path}. If that launch is dead, its lock goes stale by itself.")
    try:
        record = {"job": job.name, "command": job.command, "host": os.uname().nodename, "slurm_job_id": slurm_id,
                  "gpu": gpu, "started": time.time()}
        if is_done(job.done):
            record.update(state="finished", skipped=True, ended=time.time(), returncode=0)
            save_json(record, status_file(run_dir, job.name))
            logger.info("%s: already finished", job.name)
            return record
        save_json({**record, "state": "running"}, status_file(run_dir, job.name))
        log = log_file(run_dir, job.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        logger.info("%s: %s%s", job.name, job.command, f" (GPU {gpu})" if gpu is not None else "")
        t0 = time.perf_counter()
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.command}"
                      f"{' (SLURM job ' + slurm_id + ')' if slurm_id else ''}\n")
            out.flush()
            rc = subprocess.run(command_line(job.argv), stdout=out, stderr=subprocess.STDOUT,
                                env=job_environment(concurrent_jobs, gpu), check=False).returncode
        record.update(ended=time.time(), wall_s=round(time.perf_counter() - t0, 1), returncode=rc)
        if rc == 0 and not is_done(job.done):
            record.update(state="failed", reason=f"the command exited 0 but {job.done.get('path')} is not finished")
        else:
            record.update(state="finished" if rc == 0 else "failed", skipped=False)
        if record["state"] == "failed":
            record["log_tail"] = log_tail(run_dir, job.name)
        save_json(record, status_file(run_dir, job.name))
        if record["state"] == "failed":
            raise JobFailed(f"job {job.name} failed (exit {rc}); log: {log}\n  " + "\n  ".join(record["log_tail"]))
        logger.info("%s: finished in %.0f s", job.name, record["wall_s"])
        return record
    finally:
        lock.release()
