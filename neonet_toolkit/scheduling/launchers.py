"""Dispatch a job graph: on this machine (``local``) or to SLURM through submitit (``slurm``).

Both launchers run the same :func:`~neonet_toolkit.scheduling.worker.run_job` per job, so a job does the same thing
(lock, skip if finished, command with ``--c``, log, finished check) wherever it runs.

* :func:`run_local` runs the jobs in dependency order. With ``slots`` > 1 (or ``gpus``, one job per GPU) independent
  jobs run side by side, each its own process with ``CUDA_VISIBLE_DEVICES`` and ``NEONET_JOBS`` = the slots (the
  CPU-thread rule), longest remaining path first.
* :func:`submit_slurm` submits one SLURM job per unfinished graph job through submitit, in dependency order, with
  ``afterok`` dependencies (``--kill-on-invalid-dep=yes``: a failed job fails only its descendants), ``--gres=gpu:N``,
  memory and ``--time`` from the planner's estimates with :data:`TIME_MARGIN`, and the job's own log in the run
  folder. A job that SLURM pre-empts or times out is requeued by submitit (:class:`SlurmStageJob` is
  checkpointable) and its command continues from its checkpoint (``--c``).
* :func:`experiment_status` reads the state of every job from the result folders, the run folder and ``squeue``.
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import torch
from tqdm import tqdm

from neonet_toolkit.scheduling.graph import Graph, Job, is_done
from neonet_toolkit.scheduling.locks import ACTIVE_SLURM_STATES, JobBusy, JobLock, slurm_job_state
from neonet_toolkit.scheduling.worker import (
    JobFailed,
    lock_file,
    log_file,
    log_tail,
    read_status,
    run_job,
    safe_job_file,
)
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

TIME_MARGIN = 1.5            # --time = estimate × margin + TIME_FLOOR_MIN (start-up, validation, data loading)
TIME_FLOOR_MIN = 15
HOST_MEMORY_FACTOR = 2.0     # --mem = max(MIN_HOST_MEMORY_GB, factor × estimated GPU memory × margin)
MIN_HOST_MEMORY_GB = 8
SLURM_JOBS_FILE = "slurm_jobs.json"


class LaunchError(ValueError):
    """Bad launcher input; nothing was submitted."""


# ----------------------------------------------------------------------------- checks before anything runs
def check_gpu_memory(graph: Graph, gpu_memory_gb: float | None) -> None:
    """Refuse a graph with a stage whose estimated peak GPU memory does not fit ``gpu_memory_gb``."""
    if gpu_memory_gb is None:
        return
    too_big = [j for j in graph.pending() if j.gpu_gb is not None and j.gpu_gb > gpu_memory_gb]
    if too_big:
        rows = ", ".join(f"{j.name} ≈ {j.gpu_gb:.1f} GB" for j in too_big)
        raise LaunchError(f"these jobs do not fit {gpu_memory_gb:g} GB of GPU memory by the planner's estimate: {rows}. "
                          f"Fix: plan for this GPU (`neonet_plan_and_preprocess -d {graph.dataset} "
                          f"--gpu_memory_target_gb {gpu_memory_gb:g}` lowers the batch sizes), or use a configuration "
                          "with a smaller crop or network (--configuration); nothing was started.")


def check_gpus(gpus: list[str] | None) -> list[str] | None:
    """``--gpus 0,1``: every index must be a CUDA device of this machine."""
    if not gpus:
        return None
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bad = [g for g in gpus if not str(g).isdigit() or int(g) >= n]
    if bad:
        have = f"GPUs 0..{n - 1}" if n else "no CUDA GPU"
        raise LaunchError(f"--gpus names {','.join(map(str, bad))}, but this machine has {have}. Fix: name existing "
                          "GPUs (nvidia-smi lists them), or leave --gpus out and use --jobs N for CPU slots; "
                          "nothing was started.")
    return [str(g) for g in gpus]


# ----------------------------------------------------------------------------- local
def job_gpus(job: Job) -> int:
    """GPUs a job holds: 0 for a CPU job, else ``job.gpus`` (several for a multi-GPU NeoSeg job)."""
    return 0 if job.gpu_gb is None else max(1, int(job.gpus))


def run_local(graph: Graph, run_dir: str | Path, slots: int = 1, gpus: list[str] | None = None,
              stale_after_s: float | None = None, progress: bool = True) -> dict:
    """Run every unfinished job of ``graph`` on this machine; returns ``{"finished", "skipped", "failed", "blocked",
    "busy", "wall_s"}`` (job names). A failed job blocks only its descendants; the rest goes on."""
    run_dir = Path(run_dir)
    gpus = check_gpus(gpus)
    slots = len(gpus) if gpus else max(1, int(slots))
    too_many = [j.name for j in graph.jobs.values() if gpus and j.gpu_gb is not None and j.gpus > len(gpus)]
    if too_many:
        raise LaunchError(f"{', '.join(too_many)} ask(s) for more GPUs than --gpus gives ({len(gpus)}). Fix: name "
                          "more GPUs with --gpus, or lower --seg-gpus.")
    order = graph.topological()
    done = {j.name for j in order if is_done(j.done)}
    todo = graph.pending()
    result: dict = {"finished": [], "skipped": sorted(done), "failed": [], "blocked": [], "busy": [],
                    "not_needed": sorted({j.name for j in order} - done - {j.name for j in todo})}
    tail = graph.remaining_hours()
    free_gpus = list(gpus or [])
    running: dict[Future, tuple[Job, str | None]] = {}
    stopped: set[str] = set()   # failed, busy or blocked
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="experiment", disable=None if progress else True)
    with ThreadPoolExecutor(max_workers=slots) as pool:
        while todo or running:
            ready = [j for j in todo if all(d in done or d not in graph.jobs for d in j.deps)]
            ready.sort(key=lambda j: -tail[j.name])
            while ready and len(running) < slots:
                need = max(1, job_gpus(ready[0])) if gpus else 0
                if need > len(free_gpus):
                    if running:
                        break  # a multi-GPU job waits until enough GPUs are free
                job = ready.pop(0)
                todo.remove(job)
                held = [free_gpus.pop(0) for _ in range(need)]
                gpu = ",".join(held) if held else None
                fut = pool.submit(run_job, job, run_dir, slots, gpu, stale_after_s)
                running[fut] = (job, gpu)
            if not running:
                break  # what is left waits for a failed, busy or blocked job
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job, gpu = running.pop(fut)
                if gpu is not None:
                    free_gpus.extend(gpu.split(","))
                bar.update(1)
                try:
                    rec = fut.result()
                    done.add(job.name)
                    result["skipped" if rec.get("skipped") else "finished"].append(job.name)
                except (JobFailed, JobBusy) as e:
                    key = "busy" if isinstance(e, JobBusy) else "failed"
                    logger.error("%s", e)
                    result[key].append(job.name)
                    stopped.add(job.name)
                    for d in sorted(graph.descendants(job.name)):
                        if d not in stopped and any(j.name == d for j in todo):
                            todo[:] = [j for j in todo if j.name != d]
                            stopped.add(d)
                            result["blocked"].append(d)
                            bar.update(1)
    bar.close()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    logger.info("experiment: %d finished, %d already finished, %d failed, %d blocked by a failure, %d busy elsewhere "
                "(%.0f s)", len(result["finished"]), len(result["skipped"]), len(result["failed"]),
                len(result["blocked"]), len(result["busy"]), result["wall_s"])
    return result


# ----------------------------------------------------------------------------- SLURM
try:  # submitit is a dependency; its import is kept optional so that the local launcher never needs it
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - reported by check_slurm
    submitit = None
    Checkpointable = object


class SlurmStageJob(Checkpointable):
    """The callable submitit runs on the node: one graph job through :func:`run_job`. Checkpointable: on pre-emption
    or timeout submitit requeues it, and the rerun's command continues from the stage's checkpoint (``--c``)."""

    def __init__(self, job: dict, run_dir: str, stale_after_s: float | None = None):
        self.job = job
        self.run_dir = run_dir
        self.stale_after_s = stale_after_s

    def __call__(self) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        return run_job(Job.from_dict(self.job), self.run_dir, concurrent_jobs=1, stale_after_s=self.stale_after_s)


def check_slurm(partition: str | None = None, account: str | None = None) -> None:
    """``sbatch`` reachable and the partition/account accepted, by SLURM itself (``sbatch --test-only``)."""
    if submitit is None:
        raise LaunchError("--launcher slurm needs the submitit package: `pip install -c constraints.txt submitit`.")
    if shutil.which("sbatch") is None:
        raise LaunchError("--launcher slurm: no `sbatch` on PATH. Fix: run neonet_experiment on a SLURM login node "
                          "(or `module load slurm`), or use --launcher local; nothing was submitted.")
    cmd = ["sbatch", "--test-only", "--time=1", "--wrap", "true"]
    cmd += ([f"--partition={partition}"] if partition else []) + ([f"--account={account}"] if account else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip()
        fix = ("name a partition that `sinfo -s` lists (--slurm-partition)" if "partition" in msg.lower()
               else "name an account `sacctmgr show assoc user=$USER` lists (--slurm-account)"
               if "account" in msg.lower() else "check the --slurm-* options")
        raise LaunchError(f"SLURM refused a test submission: {msg}. Fix: {fix}; nothing was submitted.")


def slurm_resources(job: Job, gpus_per_job: int = 1, time_min: int | None = None, mem: str | None = None,
                    cpus_per_task: int | None = None) -> dict:
    """submitit's SlurmExecutor parameters of one job: ``--time`` and ``--mem`` from the estimates (module constants
    state the margins), ``--gres=gpu:N`` for GPU jobs; explicit values win."""
    hours = job.hours or 0.0
    t = time_min if time_min is not None else int(math.ceil(hours * 60 * TIME_MARGIN)) + TIME_FLOOR_MIN
    n = job_gpus(job)
    gb = (job.gpu_gb or 0.0) * max(1, n)  # host memory follows every GPU's share (one process per GPU under DDP)
    m = mem if mem is not None else f"{max(MIN_HOST_MEMORY_GB, math.ceil(HOST_MEMORY_FACTOR * gb * TIME_MARGIN))}G"
    params = {"time": int(t), "mem": m, "cpus_per_task": cpus_per_task or (4 * n if n else 2)}
    if gpus_per_job and n:
        params["gres"] = f"gpu:{max(n, gpus_per_job) if gpus_per_job > 1 else n}"
    return params


def submit_slurm(graph: Graph, run_dir: str | Path, partition: str | None = None, account: str | None = None,
                 extra: list[str] | None = None, gpus_per_job: int = 1, time_min: int | None = None,
                 mem: str | None = None, cpus_per_task: int | None = None, stale_after_s: float | None = None,
                 max_requeues: int = 3) -> dict:
    """Submit the unfinished jobs of ``graph``; returns ``{job: SLURM job id}`` (also in ``<run_dir>/slurm_jobs.json``).

    A job another launch is running (its lock is held by a live SLURM job) is not submitted again: its dependents
    wait for that job's id. ``extra``: more ``#SBATCH`` options as ``key=value`` (``--slurm-extra qos=high``)."""
    run_dir = Path(run_dir)
    check_slurm(partition, account)
    extra_params = {}
    for item in extra or []:
        k, _, v = item.lstrip("-").partition("=")
        extra_params[k.replace("-", "_")] = v if v else True
    ids: dict[str, str] = {}
    submitted: dict[str, str] = {}
    for job in graph.pending():
        holder = JobLock(lock_file(run_dir, job.name)).holder()
        if holder and holder.get("slurm_job_id") and slurm_job_state(holder["slurm_job_id"]) in ACTIVE_SLURM_STATES:
            ids[job.name] = str(holder["slurm_job_id"])
            logger.info("%s: already running as SLURM job %s (another launch); not submitted again", job.name,
                        ids[job.name])
            continue
        deps = [ids[d] for d in job.deps if d in ids]
        folder = run_dir / "slurm" / safe_job_file(job.name)
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        params = slurm_resources(job, gpus_per_job, time_min, mem, cpus_per_task)
        additional = {"kill_on_invalid_dep": "yes", **extra_params}
        ex.update_parameters(job_name=f"neonet:{job.name}", partition=partition, account=account,
                             stderr_to_stdout=True, additional_parameters=additional,
                             dependency=("afterok:" + ":".join(deps)) if deps else None, **params)
        sj = ex.submit(SlurmStageJob(job.to_dict(), str(run_dir), stale_after_s))
        ids[job.name] = submitted[job.name] = str(sj.job_id)
        logger.info("%s -> SLURM job %s%s (%s)", job.name, sj.job_id, f" after {','.join(deps)}" if deps else "",
                    ", ".join(f"{k}={v}" for k, v in params.items()))
    record = load_json(run_dir / SLURM_JOBS_FILE) if (run_dir / SLURM_JOBS_FILE).is_file() else {}
    record.update({n: {"job_id": i, "submitted": time.time()} for n, i in submitted.items()})
    save_json(record, run_dir / SLURM_JOBS_FILE)
    return ids


def wait_slurm(graph: Graph, run_dir: str | Path, ids: dict[str, str], poll_s: float = 5.0,
               timeout_s: float | None = None) -> dict[str, str]:
    """Wait until SLURM lists none of ``ids``; returns each job's final state (:func:`experiment_status`)."""
    t0 = time.monotonic()
    while any(slurm_job_state(i) in ACTIVE_SLURM_STATES for i in ids.values()):
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"SLURM jobs still active after {timeout_s:.0f} s: {sorted(ids.values())}")
        time.sleep(poll_s)
    return {r["job"]: r["state"] for r in experiment_status(graph, run_dir)}


# ----------------------------------------------------------------------------- status
def experiment_status(graph: Graph, run_dir: str | Path) -> list[dict]:
    """Each job's state: finished, running, queued (SLURM), failed (with the last log lines), not started."""
    run_dir = Path(run_dir)
    slurm = load_json(run_dir / SLURM_JOBS_FILE) if (run_dir / SLURM_JOBS_FILE).is_file() else {}
    rows = []
    to_run = {j.name for j in graph.pending()}
    for job in graph.topological():
        row = {"job": job.name, "fold": job.fold, "log": str(log_file(run_dir, job.name))}
        st = read_status(run_dir, job.name) or {}
        sid = (slurm.get(job.name) or {}).get("job_id")
        sstate = slurm_job_state(sid) if sid else None
        lock = JobLock(lock_file(run_dir, job.name))
        if is_done(job.done):
            row["state"] = "finished"
        elif sstate in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
            row["state"] = "queued"
        elif (lock.holder() is not None and lock.stale_reason() is None) or sstate in ACTIVE_SLURM_STATES:
            row["state"] = "running"
        elif st.get("state") == "failed":
            row["state"] = "failed"
            row["log_tail"] = st.get("log_tail") or log_tail(run_dir, job.name)
        elif job.name not in to_run:
            row["state"] = "not needed"  # every job that depends on it is finished
        else:
            row["state"] = "not started"
        if sid:
            row["slurm_job_id"] = sid
            if sstate:
                row["slurm_state"] = sstate
        rows.append(row)
    return rows


def format_status(rows: list[dict]) -> str:
    lines = ["| job | state | SLURM job | log |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['job']} | {r['state']} | {r.get('slurm_job_id', '—')}"
                     f"{' (' + r['slurm_state'] + ')' if r.get('slurm_state') else ''} | {r['log']} |")
    for r in rows:
        if r.get("log_tail"):
            lines += ["", f"{r['job']} failed; last lines of its log:", *["    " + x for x in r["log_tail"]]]
    return "\n".join(lines)


def cancel_slurm(run_dir: str | Path) -> list[str]:
    """``scancel`` every job this run folder submitted that SLURM still lists."""
    run_dir = Path(run_dir)
    slurm = load_json(run_dir / SLURM_JOBS_FILE) if (run_dir / SLURM_JOBS_FILE).is_file() else {}
    ids = [v["job_id"] for v in slurm.values() if slurm_job_state(v["job_id"]) in ACTIVE_SLURM_STATES]
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], check=False)
    return ids


