"""Devices, AMP and torch DDP: ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto``.

AMP (bf16 where supported, else fp16 with a GradScaler) is used on CUDA only. :class:`Distributed`
reads the torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK); it starts a process group (NCCL on
CUDA, gloo on CPU) only when :meth:`Distributed.init` is called under torchrun.
"""
from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def get_device(name: str | None = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {name!r} requested but CUDA is not available on this machine; use -device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"Unsupported device {name!r}; use cpu, cuda or cuda:N.")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    dt = amp_dtype(device)
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dt)


def make_grad_scaler(device: torch.device):
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)


class Distributed:
    """torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK). World size 1 when not under torchrun.

    Under torchrun the process group and the DDP wrapper are used whatever the world size (also
    ``--nproc_per_node=1``, which exercises the NCCL path on a single GPU); without torchrun, never."""

    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1 or ("TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ)
        self.device = device
        if self.enabled and device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)

    def init(self) -> None:
        """Start the process group (NCCL on CUDA, gloo on CPU) when launched by torchrun; no-op otherwise."""
        if not self.enabled or torch.distributed.is_initialized():
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
        torch.distributed.init_process_group(backend=backend)
        logger.info("DDP: rank %d/%d on %s (%s)", self.rank, self.world_size, self.device, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled or not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, items: list) -> list:
        """This rank's share of ``items`` (padded by repetition so every rank gets the same count)."""
        if not self.enabled:
            return list(items)
        n = int(np.ceil(len(items) / self.world_size)) * self.world_size
        padded = (list(items) * (n // max(len(items), 1) + 1))[:n]
        return padded[self.rank::self.world_size]

    def mean(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule




# ----------------------------------------------------------------------------- CPU thread rule
JOBS_ENV = "NEONET_JOBS"


def available_cores() -> int:
    """CPU cores this process may run on (affinity / container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_rule(environ: dict | None = None, cores: int | None = None) -> dict[str, int]:
    """The one rule for CPU threads: ``threads = max(1, cores // jobs)``.

    ``jobs`` is ``NEONET_JOBS`` (how many NeoNet / nnU-Net processes the user runs side by side; default
    1). Intra-op threads = ``threads`` unless ``OMP_NUM_THREADS`` is set (the user's value wins);
    nnU-Net's augmentation workers (``nnUNet_n_proc_DA``, its default is 12 whatever the machine) =
    ``max(1, threads - 1)`` unless set, so that workers + the training process fit the share.
    Returns ``{"cores", "jobs", "threads", "intra_op_threads", "nnunet_da_workers"}``."""
    env = os.environ if environ is None else environ
    cores = available_cores() if cores is None else int(cores)
    try:
        jobs = max(1, int(env.get(JOBS_ENV, "1")))
    except ValueError:
        raise ValueError(f"{JOBS_ENV}={env.get(JOBS_ENV)!r} is not a whole number of concurrent jobs.") from None
    threads = max(1, cores // jobs)

    def _user(name, default):
        try:
            return max(1, int(env[name])) if env.get(name) else default
        except ValueError:
            raise ValueError(f"{name}={env.get(name)!r} is not a whole number.") from None

    return {"cores": cores, "jobs": jobs, "threads": threads,
            "intra_op_threads": _user("OMP_NUM_THREADS", threads),
            "nnunet_da_workers": _user("nnUNet_n_proc_DA", max(1, threads - 1))}


def apply_thread_rule() -> dict[str, int]:
    """For console entry points (they own their process): apply :func:`thread_rule` to torch and set
    ``nnUNet_n_proc_DA`` (and ``OMP_NUM_THREADS`` for child processes) where the user has not."""
    rule = thread_rule()
    os.environ.setdefault("OMP_NUM_THREADS", str(rule["intra_op_threads"]))
    os.environ.setdefault("nnUNet_n_proc_DA", str(rule["nnunet_da_workers"]))
    if torch.get_num_threads() != rule["intra_op_threads"]:
        torch.set_num_threads(rule["intra_op_threads"])
    logger.debug("threads: %s", rule)
    return rule
