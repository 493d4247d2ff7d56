"""One running copy per job: a lock file per graph job that survives a crashed node.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) holding who runs the
job (host, pid, SLURM job id, start time). While the job runs, a heartbeat thread touches it every
``stale_after_s / 10`` seconds. A lock is **stale**, and is broken by the next launch, when

* its holder ran on this host and that process is gone (killed, crashed), or
* its heartbeat is older than ``stale_after_s`` (the node died, or the holder hung past every heartbeat), or
* its holder was a SLURM job that the scheduler no longer lists as pending or running.

A broken lock is moved aside (``*.stale-<time>``), never silently deleted, so what happened can be read later.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 600.0
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                       "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


class JobBusy(RuntimeError):
    """The job is being run by another live launch."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slurm_job_state(job_id: str) -> str | None:
    """SLURM's state of a job (``squeue``), None when it is no longer listed or SLURM is not reachable."""
    if not job_id or shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = [s.strip() for s in out.stdout.splitlines() if s.strip()]
    return states[0] if out.returncode == 0 and states else None


class JobLock:
    """``with JobLock(path).held(owner):`` or :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str | Path, stale_after_s: float = DEFAULT_STALE_AFTER_S):
        self.path = Path(path)
        self.stale_after_s = float(stale_after_s)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # being written, or garbage: judged by its age

    def stale_reason(self, info: dict | None = None) -> str | None:
        """Why the current lock is stale, or None while its holder is alive."""
        info = self.holder() if info is None else info
        if info is None:
            return None
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        if info.get("host") == socket.gethostname() and info.get("pid") and not info.get("slurm_job_id") \
                and not _pid_alive(info["pid"]):
            return f"its process {info['pid']} on {info['host']} is gone"
        if info.get("slurm_job_id") and str(info["slurm_job_id"]) == os.environ.get("SLURM_JOB_ID"):
            return f"it was taken by an earlier run of this same SLURM job {info['slurm_job_id']} (requeued)"
        if info.get("slurm_job_id") and shutil.which("squeue"):
            state = slurm_job_state(info["slurm_job_id"])
            if state is None or state not in ACTIVE_SLURM_STATES:
                return f"its SLURM job {info['slurm_job_id']} is {state or 'no longer queued'}"
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (> {self.stale_after_s:.0f} s)"
        return None

    def acquire(self, owner: dict) -> bool:
        """Take the lock for ``owner`` (a dict recorded in the file); False if a live holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                reason = self.stale_reason()
                if reason is None:
                    if self.path.exists():
                        return False
                    continue  # released in between
                aside = self.path.with_name(f"{self.path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
                try:
                    os.replace(self.path, aside)
                    logger.warning("lock %s was stale (%s): moved to %s", self.path, reason, aside.name)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**owner, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
            self._start_heartbeat()
            return True
        return False

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        every = max(0.5, self.stale_after_s / 10)

        def beat():
            while not self._stop.wait(every):
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        self._beat = threading.Thread(target=beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        info = self.holder()
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
