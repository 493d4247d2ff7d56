"""A real single-node SLURM cluster for the tests: munged + slurmctld + slurmd started from a temporary folder.

Nothing is mocked and nothing under /etc is read or written: the key, the socket, ``slurm.conf``, the state,
spool, log and pid files all live in one temporary folder, the daemons listen on free ports picked at start, and
every client (``sbatch``, ``squeue``, submitit, ...) finds the cluster through ``SLURM_CONF`` (``cluster.env``).
The munge socket is named in ``slurm.conf`` (``AuthInfo=socket=...``), so a system munged is never used.

``SlurmCluster.start()`` raises ``SlurmUnavailable`` (the fixture turns it into a skip) where the programs are
missing and cannot be installed (``apt-get install slurm-wlm munge`` is tried as root only) or the daemons do not
come up; the message then carries the tail of every daemon log.

There is no accounting (no slurmdbd): ``sacct`` does not work here. Finished jobs stay visible to
``squeue --states=all`` for ``MIN_JOB_AGE`` seconds, which is what ``squeue_states``/``wait_all_done`` read.
"""
from __future__ import annotations

import ctypes
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PARTITION = "debug"
CLUSTER_NAME = "neonettest"
MIN_JOB_AGE = 30  # seconds a finished job stays visible to squeue (there is no sacct without slurmdbd)
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol")
EXTRA_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin")
# squeue's long state names of jobs that will not change any more
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "SPECIAL_EXIT", "REVOKED",
})


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be found, installed or started on this machine (the tests skip with this message)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_DIRS))


def find_programs() -> dict[str, str]:
    """Paths of the daemons, the clients and munge's key tool; missing ones are left out."""
    names = DAEMONS + CLIENTS + ("mungekey", "create-munge-key")
    return {n: p for n in names if (p := _which(n))}


def install_with_apt(timeout: float = 900) -> str:
    """``apt-get install -y slurm-wlm munge`` (then ``apt-get update`` and again), as root only. Returns a log."""
    if os.geteuid() != 0:
        return "not root: apt-get install slurm-wlm munge not tried"
    apt = _which("apt-get")
    if apt is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "slurm-wlm", "munge"]
    out = []
    for cmd in (install, [apt, "update"], install):
        logger.info("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            out.append(f"{' '.join(cmd)}: {e}")
            return "\n".join(out)
        out.append(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-1000:]}")
        if cmd is install and proc.returncode == 0:
            break
    return "\n".join(out)


def require_programs(install: bool = True) -> dict[str, str]:
    """All programs the cluster needs, installing them as root where missing; ``SlurmUnavailable`` otherwise."""
    needed = DAEMONS + CLIENTS
    progs = find_programs()
    missing = [n for n in needed if n not in progs]
    if missing and install:
        log = install_with_apt()
        progs = find_programs()
        missing = [n for n in needed if n not in progs]
        if missing:
            raise SlurmUnavailable(f"SLURM/munge programs not found: {', '.join(missing)} "
                                   f"(install: apt-get install -y slurm-wlm munge). {log}")
    elif missing:
        raise SlurmUnavailable(f"SLURM/munge programs not found: {', '.join(missing)}")
    return progs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware(slurmd: str) -> dict[str, str]:
    """``slurmd -C``'s first line as a dict (NodeName, CPUs, Boards, ..., RealMemory)."""
    try:
        proc = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmUnavailable(f"`slurmd -C` failed: {e}") from e
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if proc.returncode != 0 or line is None:
        raise SlurmUnavailable(f"`slurmd -C` failed (exit {proc.returncode}): {proc.stdout} {proc.stderr}")
    return dict(re.findall(r"(\w+)=(\S+)", line))


def slurm_conf_text(root: Path, node: str, hardware: dict[str, str], ctld_port: int, slurmd_port: int,
                    user: str) -> str:
    """The whole ``slurm.conf``: one node with this machine's CPUs, one partition, everything under ``root``."""
    real_mem = int(hardware.get("RealMemory", "2048"))
    cpus = int(hardware.get("CPUs", "1"))
    mem = max(256, int(real_mem * 0.9))  # a bit below the real memory, or slurmd drains the node ("Low RealMemory")
    def_mem = max(64, min(1024, mem // max(cpus, 1) // 2))  # a job without --mem must not take the whole node
    layout = " ".join(f"{k}={hardware[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                      "ThreadsPerCore") if k in hardware)
    return f"""\
# single-node test cluster written by tests/scheduling/slurm_cluster.py
ClusterName={CLUSTER_NAME}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg={shutil.which("true") or "/bin/true"}
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={def_mem}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait=2
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
Waittime=0
NodeName={node} NodeAddr=127.0.0.1 {layout} RealMemory={mem} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _die_with_parent() -> None:
    """preexec_fn: the daemon gets SIGTERM when the test process dies, even on SIGKILL (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path.name}: (no file)"
    return f"--- {path.name} (last {min(n, len(lines))} lines)\n" + "\n".join(lines[-n:])


@dataclass
class SlurmCluster:
    """A running cluster: ``conf`` (slurm.conf), ``env`` (``{"SLURM_CONF": ...}``), ``partition``, ``log_dir``."""

    root: Path
    conf: Path
    node: str
    programs: dict[str, str]
    partition: str = PARTITION
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    keep_root: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    # ---- start / stop -------------------------------------------------------------------------------------
    @classmethod
    def start(cls, root: Path | None = None, timeout: float = 60.0, install: bool = True) -> "SlurmCluster":
        """Write the config, start munged, slurmctld and slurmd and wait until the node is idle.

        ``root`` (default: a new folder in the temp dir) and every folder above it must be searchable by all users:
        munged refuses a socket below a private folder (so not pytest's ``tmp_path``)."""
        programs = require_programs(install=install)
        hardware = node_hardware(programs["slurmd"])
        node = hardware["NodeName"]  # slurmd's own idea of its name (`hostname -s`); passed again with -N
        root = Path(tempfile.mkdtemp(prefix="neonet-slurm-")) if root is None else Path(root)
        # munged wants every folder above its socket to be searchable by all, and its key folder private
        root.chmod(0o755)
        for sub, mode in (("munge", 0o755), ("munge-key", 0o700), ("state", 0o755), ("spool", 0o755),
                          ("log", 0o755), ("run", 0o755)):
            (root / sub).mkdir(exist_ok=True)
            (root / sub).chmod(mode)
        conf = root / "slurm.conf"
        ctld_port = free_port()
        user = pwd.getpwuid(os.geteuid()).pw_name  # SlurmUser = whoever runs the tests (root in CI)
        conf.write_text(slurm_conf_text(root, node, hardware, ctld_port, free_port(), user))
        cluster = cls(root=root, conf=conf, node=node, programs=programs)
        t0 = time.monotonic()
        try:
            cluster._start_munged()
            cluster._spawn("slurmctld", [programs["slurmctld"], "-D", "-f", str(conf)])
            # clients retry a dead controller for MessageTimeout: wait for its port first, watching the process
            cluster._wait_port("slurmctld", ctld_port, t0 + timeout)
            cluster._spawn("slurmd", [programs["slurmd"], "-D", "-f", str(conf), "-N", node])
            cluster._wait_idle(t0 + timeout)
        except BaseException as e:
            logs = cluster.log_tails()
            cluster.stop()
            if isinstance(e, SlurmUnavailable):
                raise SlurmUnavailable(f"{e}\n{logs}") from e
            raise
        logger.info("SLURM test cluster up in %.1f s (%s)", time.monotonic() - t0, conf)
        return cluster

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**env, **self.env}

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.log_dir / f"{name}.stderr", "wb")
        try:
            self.processes[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    env=self._client_env(), cwd=self.root,
                                                    preexec_fn=_die_with_parent)
        except OSError as e:
            raise SlurmUnavailable(f"cannot start {name}: {e}") from e
        finally:
            out.close()

    def _start_munged(self) -> None:
        key = self.root / "munge-key" / "munge.key"
        mungekey = self.programs.get("mungekey")
        if mungekey:
            subprocess.run([mungekey, "-c", "-f", "-k", str(key)], capture_output=True, timeout=30)
        if not key.exists():  # old munge (create-munge-key writes /etc only): any >= 32 random bytes are a key
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = self.root / "munge" / "munge.socket"
        self._spawn("munged", [self.programs["munged"], "-F", f"--key-file={key}", f"--socket={sock}",
                               f"--log-file={self.log_dir / 'munged.log'}",
                               f"--pid-file={self.root / 'run' / 'munged.pid'}",
                               f"--seed-file={self.root / 'munge-key' / 'munged.seed'}"])
        deadline = time.monotonic() + 15
        while not sock.exists():
            if self.processes["munged"].poll() is not None:
                raise SlurmUnavailable(f"munged exited with {self.processes['munged'].returncode}")
            if time.monotonic() > deadline:
                raise SlurmUnavailable("munged did not create its socket within 15 s")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with {proc.returncode} during start-up")

    def _wait_port(self, name: str, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise SlurmUnavailable(f"{name} did not listen on port {port} in time")

    def _wait_idle(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                res = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%t", timeout=10)
            except subprocess.TimeoutExpired:
                continue
            state = (res.stdout.strip() or res.stderr.strip()).lower()
            if res.returncode == 0 and state.rstrip("*~#!%$@^-") == "idle":
                return
            time.sleep(0.1)
        raise SlurmUnavailable(f"node {self.node} not idle in time (sinfo: {state!r})")

    def log_tails(self, n: int = 15) -> str:
        return "\n".join(_tail(self.log_dir / f, n) for f in (
            "munged.log", "munged.stderr", "slurmctld.log", "slurmctld.stderr", "slurmd.log", "slurmd.stderr"))

    def stop(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged (by their own process ids), remove the folder."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            try:
                live = [j for j, s in self.squeue_states().items() if s not in TERMINAL_STATES]
                if live:
                    self.run("scancel", *live, timeout=15)
                    self.wait_all_done(timeout=20)
            except (subprocess.SubprocessError, OSError, TimeoutError) as e:
                logger.warning("could not cancel the remaining jobs: %s", e)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if not self.keep_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- clients ------------------------------------------------------------------------------------------
    def run(self, program: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client (``sbatch``, ``squeue``, ...) against this cluster; never raises on its exit code."""
        exe = self.programs.get(program) or _which(program) or program
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=self._client_env())

    def sbatch(self, *args: str) -> str:
        """``sbatch --parsable ARGS`` -> the job id; ``RuntimeError`` with SLURM's message when it is refused."""
        res = self.run("sbatch", "--parsable", *args)
        if res.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed (exit {res.returncode}): {res.stderr.strip()}")
        return res.stdout.strip().split(";")[0]

    def squeue_states(self) -> dict[str, str]:
        """``{job id: state}`` of every job slurmctld still knows (finished ones for MinJobAge seconds)."""
        res = self.run("squeue", "-h", "--states=all", "-o", "%i|%T")
        if res.returncode != 0:
            raise RuntimeError(f"squeue failed (exit {res.returncode}): {res.stderr.strip()}")
        return dict(ln.split("|", 1) for ln in res.stdout.split() if "|" in ln)

    def job_state(self, job_id: str) -> str | None:
        return self.squeue_states().get(str(job_id))

    def wait_state(self, job_id: str, states: set[str] | frozenset[str], timeout: float = 30) -> str:
        """Poll until the job's state is one of ``states``; returns it (``TimeoutError`` with squeue's view)."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} within {timeout} s (last: {state}); "
                           f"squeue: {self.squeue_states()}")

    def wait_all_done(self, timeout: float = 30, job_ids: list[str] | None = None) -> dict[str, str]:
        """Poll until every job (or ``job_ids``) is finished or forgotten; returns the last states seen."""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            states = self.squeue_states()
            seen.update(states)
            wanted = states if job_ids is None else {j: states[j] for j in map(str, job_ids) if j in states}
            if all(s in TERMINAL_STATES for s in wanted.values()):
                return seen if job_ids is None else {j: seen.get(str(j), "GONE") for j in job_ids}
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still active after {timeout} s: "
                                   f"{ {j: s for j, s in wanted.items() if s not in TERMINAL_STATES} }")
            time.sleep(0.2)
