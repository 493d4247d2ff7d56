"""The experiment as a graph of per-fold jobs: what runs, after what, and what it costs.

:data:`DEPENDS` is the one place where the order of NeoNet's stages is written. Per fold ``F``:

* ``seg/F``        NeoSeg (nnU-Net trainer)                      ``neonet_train D seg F --c``
* ``masks/F``      out-of-fold TLCR patches of fold F's validation cases, from ``seg/F``
* ``vae/F``        NeoGen autoencoder (or ``vqvae/F``)
* ``ldm/F``        latent diffusion U-Net, after the autoencoder of the same fold
* ``controlnet/F`` after the fold's LDM
* ``generate/F``   the balanced synthetic set, after the fold's ControlNet (and, for ``--crop-source pred``, after
  the out-of-fold masks of *every* fold: a fold's training cases are other folds' validation cases)
* ``quality/F``    the synthetic set's quality gate (``neonet_evaluate D gen -f F`` → ``quality.json``)
* ``cls/<run>/F``  each classifier run, after the fold's VAE (PattenNet's frozen encoder), its synthetic set's
  quality verdict (ratio > 0) and, for ``pred`` crops, every fold's masks
* ``radiomics/F``  the radiomics baseline (CPU), after the masks its crops need
* ``evaluate``     the cross-validated report, after every classifier job

A job is *finished* by the same rule the resumable trainers use (``ResultLayout.is_finished``), so a graph built
again after an interruption holds only what is missing. Each job carries the planner's estimate of its GPU memory
and time (``neonet_plans.json`` → ``resource_estimates``: seconds per optimizer step × the configuration's steps).
"""
from __future__ import annotations

import heapq
import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.models.seg import seg_trainer_name
from neonet_toolkit.preprocessing.patches import METADATA_FILE, patch_folder
from neonet_toolkit.preprocessing.synthetic_sets import QUALITY_FILE, synthetic_folder
from neonet_toolkit.utilities.identifiers import (
    AUTO_RATIO,
    CLS_EVALUATION_DIR,
    CLS_SUMMARY_FILE,
    FINAL_CHECKPOINT,
    PLANS_NAME,
    SYNTHETIC_MANIFEST,
    ClsRunId,
    ResultLayout,
    cls_run_name,
)
from neonet_toolkit.utilities.io import load_json

logger = logging.getLogger(__name__)

#: stage -> the stages it waits for. ``fold``: the same fold; ``all``: that stage on every fold of the graph.
#: Conditions (which autoencoder, crop source, ratio > 0, PattenNet) are applied in :func:`build_graph`.
DEPENDS: dict[str, tuple[tuple[str, str], ...]] = {
    "seg": (),
    "masks": (("seg", "fold"),),
    "vae": (),
    "vqvae": (),
    "ldm": (("autoencoder", "fold"),),
    "controlnet": (("ldm", "fold"),),
    "generate": (("controlnet", "fold"), ("masks", "all")),
    "quality": (("generate", "fold"),),
    "cls": (("vae", "fold"), ("quality", "fold"), ("masks", "all")),
    "radiomics": (("masks", "all"),),
    "evaluate": (("cls", "all"), ("radiomics", "all")),
}
STAGE_ORDER = tuple(DEPENDS)
GPU_STAGES = ("seg", "vae", "vqvae", "ldm", "controlnet", "generate", "cls")


@dataclass
class Job:
    """One node of the graph: a command, what it waits for, how to tell it is done, and its estimated cost."""

    name: str                      # e.g. "vae/0", "cls/cls_pattennet_1_esnested/0", "evaluate"
    stage: str
    fold: int | None
    argv: list[str]                # a console command (``neonet_train 501 vae 0 --c``), runnable by hand
    deps: list[str] = field(default_factory=list)
    done: dict = field(default_factory=dict)   # {"kind": ..., "path": ...}: see :func:`is_done`
    gpu_gb: float | None = None    # estimated peak GPU memory; None: a CPU job
    hours: float | None = None     # estimated time on the planner's reference GPU
    gpus: int = 1
    tags: dict = field(default_factory=dict)   # what the wiring needs to know: {"arch": ..., "ratio": ...}

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def to_dict(self) -> dict:
        return {"name": self.name, "stage": self.stage, "fold": self.fold, "argv": list(self.argv),
                "deps": list(self.deps), "done": dict(self.done), "gpu_gb": self.gpu_gb, "hours": self.hours,
                "gpus": self.gpus, "tags": dict(self.tags)}

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        return cls(**{k: d[k] for k in ("name", "stage", "fold", "argv", "deps", "done", "gpu_gb", "hours", "gpus", "tags")
                      if k in d})


def is_done(done: dict) -> bool:
    """The finished rule of a job (the same files the trainers' own resume logic reads)."""
    kind = done.get("kind")
    if kind is None:
        return False
    if kind == "masks":  # every validation case of the fold has its pred patch (metadata written last)
        meta_file = Path(done["path"]) / METADATA_FILE
        if not meta_file.is_file():
            return False
        cases = load_json(meta_file).get("cases", {})
        return all(c in cases for c in done["cases"])
    if kind == "newer":  # a report newer than every input it summarises
        out = Path(done["path"])
        if not out.is_file():
            return False
        inputs = [Path(p) for p in done.get("than", [])]
        return all(p.is_file() and p.stat().st_mtime <= out.stat().st_mtime for p in inputs)
    return ResultLayout.is_finished(kind, Path(done["path"]))


def job_name(stage: str, fold: int | None = None, run: str | None = None) -> str:
    parts = [stage] + ([run] if run else []) + ([str(fold)] if fold is not None else [])
    return "/".join(parts)


def _steps(stage: str, conf: dict, n_train: int, n_val: int, n_generate: int = 0) -> float:
    """Optimizer steps of one fold of ``stage`` under configuration ``conf`` (the trainers' own epoch loops)."""
    s = conf[stage]
    if stage == "seg":
        return s["epochs"] * (s["iterations_per_epoch"] + s.get("val_iterations_per_epoch", 0) / 3)
    if stage == "cls":  # real + synthetic cases; model selection's inner fits on (k-1)/k of them, then the refit
        n = n_train + n_generate
        k = int(s.get("inner_folds", 0) or 0)
        mode = s.get("early_stopping")
        inner = (k - 1) if (mode == "nested" and k > 1) else ((k - 1) / k if (mode == "inner" and k > 1) else 0.0)
        return s["epochs"] * math.ceil(n / s["batch_size"]) * (1 + inner)
    return s["epochs"] * math.ceil(n_train / s["batch_size"])


def estimate(stage: str, conf: dict, estimates: dict, n_train: int, n_val: int,
             n_generate: int = 0, epochs: int | None = None) -> tuple[float | None, float | None]:
    """(peak GPU GB, hours) of one job from the planner's per-step estimate; (None, None) where none exists.
    ``epochs`` overrides the configuration's epochs (``--epochs``)."""
    if epochs is not None and stage in conf and "epochs" in conf[stage]:
        conf = {**conf, stage: {**conf[stage], "epochs": int(epochs)}}
    key = {"generate": "controlnet"}.get(stage, stage)
    row = estimates.get(key) or {}
    if "peak_gb" not in row:
        return None, None
    if stage == "generate":  # sampling: forward passes only (~1/3 of a training step) per DDIM step per patch
        steps = conf.get("sampling", {}).get("steps", 50)
        secs = row["seconds_per_step"] / 3 * steps * max(1, n_generate) / max(1, row.get("batch_size", 1))
    else:
        secs = row["seconds_per_step"] * _steps(stage, conf, n_train, n_val, n_generate)
    return float(row["peak_gb"]), secs / 3600


@dataclass
class Graph:
    dataset: str
    jobs: dict[str, Job]
    configuration: str
    folds: list[int]

    def topological(self) -> list[Job]:
        """Jobs in dependency order (ties: stage order, then fold)."""
        order, seen = [], set()
        indeg = {n: len([d for d in j.deps if d in self.jobs]) for n, j in self.jobs.items()}
        rank = {s: i for i, s in enumerate(STAGE_ORDER)}
        key = (lambda n: (rank.get(self.jobs[n].stage, 99), self.jobs[n].fold or 0, n))
        ready = sorted((n for n, k in indeg.items() if k == 0), key=key)
        children = self.children()
        while ready:
            n = ready.pop(0)
            order.append(self.jobs[n])
            seen.add(n)
            for c in children[n]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
            ready.sort(key=key)
        if len(order) != len(self.jobs):
            raise ValueError(f"the job graph has a cycle among {sorted(set(self.jobs) - seen)}")
        return order

    def children(self) -> dict[str, list[str]]:
        ch: dict[str, list[str]] = {n: [] for n in self.jobs}
        for n, j in self.jobs.items():
            for d in j.deps:
                if d in ch:
                    ch[d].append(n)
        return ch

    def descendants(self, name: str) -> set[str]:
        ch, out, todo = self.children(), set(), [name]
        while todo:
            for c in ch[todo.pop()]:
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    def pending(self) -> list[Job]:
        """The jobs to run, in dependency order: the unfinished ones that end the graph (no job depends on them) and
        the unfinished ancestors of those. As in ``make``, an unfinished job all of whose dependents are finished is
        not needed (a synthetic set that exists does not need its LDM trained again)."""
        order = self.topological()
        children = self.children()
        finished = {j.name for j in order if is_done(j.done)}
        needed: set[str] = set()
        for j in reversed(order):
            if j.name not in finished and (not children[j.name] or any(c in needed for c in children[j.name])):
                needed.add(j.name)
        return [j for j in order if j.name in needed]

    def wall_hours(self, n_gpus: int, only_pending: bool = False) -> float:
        """Estimated wall time on ``n_gpus`` GPUs: list scheduling of the graph, longest remaining path first
        (critical-path priority), one job per GPU. With one GPU it is the sum of the jobs' times."""
        jobs = {j.name: j for j in (self.pending() if only_pending else self.topological())}
        cost = {n: (j.hours or 0.0) for n, j in jobs.items()}
        tail = self.remaining_hours(set(jobs))
        deps = {n: [d for d in jobs[n].deps if d in jobs] for n in jobs}
        finish: dict[str, float] = {}
        free = [0.0] * max(1, int(n_gpus))
        waiting = set(jobs)
        while waiting:
            ready = [n for n in waiting if all(d in finish for d in deps[n])]
            n = max(ready, key=lambda x: (tail[x], x))
            start_earliest = max((finish[d] for d in deps[n]), default=0.0)
            if jobs[n].gpu_gb is None:  # CPU job: does not hold a GPU slot
                finish[n] = start_earliest + cost[n]
            else:  # a job holds job.gpus GPUs (multi-GPU NeoSeg): the ones free first
                k = min(len(free), max(1, jobs[n].gpus))
                slots = sorted(range(len(free)), key=lambda i: max(free[i], start_earliest))[:k]
                begin = max([start_earliest] + [free[i] for i in slots])
                finish[n] = begin + cost[n]
                for i in slots:
                    free[i] = finish[n]
            waiting.remove(n)
        return max(finish.values(), default=0.0)

    def remaining_hours(self, among: set[str] | None = None) -> dict[str, float]:
        """Estimated hours from a job's start to the end of its longest chain of descendants (``among`` only): the
        priority of list scheduling."""
        among = set(self.jobs) if among is None else among
        ch = self.children()
        tail: dict[str, float] = {}
        for j in reversed([j for j in self.topological() if j.name in among]):
            tail[j.name] = (j.hours or 0.0) + max((tail[c] for c in ch[j.name] if c in among), default=0.0)
        return tail

    def critical_path_hours(self) -> float:
        return self.wall_hours(n_gpus=10 ** 6)

    def table(self) -> str:
        """The ``--dry-run`` view: job, fold, dependencies, estimated GPU memory and time, state."""
        rows = ["| job | fold | waits for | GPU GB (est.) | time (est.) | state | command |",
                "|---|---|---|---|---|---|---|"]
        for j in self.topological():
            gb = "CPU" if j.gpu_gb is None else f"{j.gpu_gb:.1f}"
            t = "—" if j.hours is None else fmt_hours(j.hours)
            rows.append(f"| {j.name} | {'—' if j.fold is None else j.fold} | {', '.join(j.deps) or '—'} | {gb} | {t} "
                        f"| {'finished' if is_done(j.done) else 'to run'} | `{j.command}` |")
        return "\n".join(rows)


def fmt_hours(h: float) -> str:
    if h >= 1:
        return f"{h:.1f} h"
    if h * 60 >= 1:
        return f"{h * 60:.0f} min"
    return f"{h * 3600:.0f} s"


def build_graph(dataset, archs: list[str], ratios: list[float | str], folds: list[int] | None = None,
                crop_source: str = "gt", arms: list[str] | None = None, seg: bool = True, seg_arch: str | None = None,
                autoencoder: str = "vae", early_stopping: str | None = None, configuration: str | None = None,
                device: str = "auto", epochs: int | None = None, stage_args: dict[str, list[str]] | None = None,
                allow_failed_gate: bool = False, evaluate: bool = True, shortcut: bool = True,
                n_boot: int | None = None, cls_estimates: dict[str, dict] | None = None, seg_gpus: int = 1,
                plans_name: str = PLANS_NAME,
                target: str = "cuda") -> Graph:
    """The job graph of ``neonet_experiment``: NeoSeg, out-of-fold masks, NeoGen, generation, every classifier run
    of ``archs`` × ``ratios`` × ``arms`` on ``folds``, and the evaluation. ``archs`` are canonical names
    (``pattennet``, ``resnet50``, …); ``target`` (cpu|cuda) picks the plans' default configuration for the
    estimates when ``configuration`` is not given. ``cls_estimates``: ``{arch: per-step estimate}`` of the
    classifiers (``training.resources.estimate_classifiers``); without it every classifier is costed as the plans'
    ``cls`` row (the configured architecture). ``seg_gpus`` > 1: each NeoSeg job trains with nnU-Net's
    ``-num_gpus`` (DDP on one node) and asks for that many GPUs; its estimated time is divided by them (ideal
    scaling: a lower bound)."""
    layout = ResultLayout.for_dataset(dataset, plans_name)
    pp = layout.preprocessed
    plans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    conf_name = configuration or plans.default_configuration(target)
    conf = plans.configuration(conf_name)
    estimates = (plans.plans.get("resource_estimates") or {}).get("configurations", {}).get(conf_name, {})
    splits = load_splits(pp)
    folds = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    for f in folds:
        get_fold(splits, f)
    arms = list(arms or ["synthetic"])
    stage_args = {k: list(v) for k, v in (stage_args or {}).items()}
    ds = layout.dataset_name
    early = early_stopping or conf["cls"].get("early_stopping", "nested")
    seg_arch = (seg_arch or conf["seg"]["architecture"]).lower()
    fixed = [r for r in ratios if r != AUTO_RATIO]
    need_gen = any(r == AUTO_RATIO or r > 0 for r in ratios)
    max_ratio = max(fixed + ([1.0] if AUTO_RATIO in ratios else []), default=0.0)
    pred = crop_source == "pred"
    common = ["-device", device] + (["--configuration", configuration] if configuration else [])
    train_common = common + (["--epochs", str(epochs)] if epochs is not None else [])
    jobs: dict[str, Job] = {}

    counts = plans.plans.get("class_counts") or {}  # the cohort's; a fold's training gap is ~(K-1)/K of it
    gap = abs(int(counts.get("1", 0)) - int(counts.get("0", 0)))
    first = splits[folds[0]] if folds else {"train": [], "val": [None]}
    k_folds = max(1, round((len(first["train"]) + len(first["val"])) / max(1, len(first["val"]))))
    cls_conf = {**conf, "cls": {**conf["cls"], "early_stopping": early}} if "cls" in conf else conf

    def add(stage, fold, argv, done, run=None, n_gen=0, tags=None, gpus=1):
        tr = splits[fold]["train"] if fold is not None else []
        va = splits[fold]["val"] if fold is not None else []
        rows = estimates
        if stage == "cls" and "peak_gb" in (cls_estimates or {}).get(tags["arch"], {}):
            rows = {**estimates, "cls": cls_estimates[tags["arch"]]}  # this architecture's own step cost
        gb, hours = (estimate(stage, cls_conf if stage == "cls" else conf, rows, len(tr), len(va), n_gen, epochs)
                     if stage in GPU_STAGES else (None, None))
        if stage in GPU_STAGES and gb is None:
            gb = 0.0  # a GPU stage without a planner estimate (planned with --no_resource_estimates)
        if hours is not None and gpus > 1:
            hours /= gpus
        name = job_name(stage, fold, run)
        jobs[name] = Job(name, stage, fold, argv + stage_args.get(stage, []), [], done, gb, hours, gpus=gpus,
                         tags=tags or {})
        return name

    radiomics = "radiomics" in archs
    archs = [a for a in archs if a != "radiomics"]
    for f in folds:
        if radiomics:
            add("radiomics", f, ["neonet_experiment", ds, "--archs", "radiomics", "--folds", str(f), "--crop-source",
                                 crop_source, "--launcher", "inline", "--no-evaluate", "--no-shortcut"],
                {"kind": "cls_predictions", "path": str(layout.fold_folder(cls_run_name("radiomics", 0.0, crop_source),
                                                                           f))})
        if seg:
            trainer = seg_trainer_name(seg_arch)
            add("seg", f, ["neonet_train", ds, "seg", str(f), "--c", "--arch", seg_arch] + train_common
                + (["-num_gpus", str(int(seg_gpus))] if seg_gpus > 1 else []),
                {"kind": "model", "path": str(layout.nnunet_fold_folder(trainer, f))}, gpus=max(1, int(seg_gpus)))
            add("masks", f, ["neonet_train", ds, "seg", str(f), "--oof-masks", "--arch", seg_arch],
                {"kind": "masks", "path": str(patch_folder(pp, "pred")), "cases": list(splits[f]["val"])})
        need_ae = need_gen or any(a.startswith("pattennet") for a in archs)
        if need_ae:
            ae = "vae" if (any(a.startswith("pattennet") for a in archs) or autoencoder == "vae") else autoencoder
            for stage in dict.fromkeys([ae, autoencoder] if need_gen else [ae]):
                add(stage, f, ["neonet_train", ds, stage, str(f), "--c"] + train_common,
                    {"kind": "model", "path": str(layout.fold_folder(stage, f))})
        if need_gen:
            ae_opt = [] if autoencoder == "vae" else ["--autoencoder", autoencoder]
            add("ldm", f, ["neonet_train", ds, "ldm", str(f), "--c"] + ae_opt + train_common,
                {"kind": "model", "path": str(layout.fold_folder("ldm", f))})
            add("controlnet", f, ["neonet_train", ds, "controlnet", str(f), "--c"] + ae_opt + train_common,
                {"kind": "model", "path": str(layout.fold_folder("controlnet", f))})
            n_gen = int(gap * max_ratio)
            add("generate", f, ["neonet_generate", "-d", ds, "-f", str(f), "--ratio", f"{max_ratio:g}",
                                "--crop-source", crop_source] + (["--n-majority", "-1"] if "both" in arms else [])
                + ae_opt + common,
                {"kind": "synthetic_set", "path": str(synthetic_folder(layout, f, plans_name, crop_source))},
                n_gen=n_gen)
            sfolder = synthetic_folder(layout, f, plans_name, crop_source)
            add("quality", f, ["neonet_evaluate", ds, "gen", "-f", str(f), "-device", device],
                {"kind": "newer", "path": str(sfolder / QUALITY_FILE), "than": [str(sfolder / SYNTHETIC_MANIFEST)]})
        for arch in archs:
            for ratio in ratios:
                for arm in (arms if ratio == AUTO_RATIO or ratio > 0 else ["synthetic"]):
                    run = ClsRunId(arch, ratio, crop_source, early, arm).name
                    argv = ["neonet_train", ds, "cls", str(f), "--c", "--arch", arch, "--synthetic-ratio",
                            ratio if ratio == AUTO_RATIO else f"{ratio:g}", "--crop-source", crop_source]
                    argv += (["--arm", arm] if arm != "synthetic" else [])
                    argv += (["--early-stopping", early_stopping] if early_stopping else [])
                    argv += (["--allow-failed-gate"] if allow_failed_gate else []) + train_common
                    r = 0.5 if ratio == AUTO_RATIO else ratio  # auto: the mid candidate
                    add("cls", f, argv, {"kind": "model", "path": str(layout.fold_folder(run, f))}, run=run,
                        n_gen=round(gap * (k_folds - 1) / k_folds * r), tags={"arch": arch, "ratio": ratio})
    if evaluate and any(j.stage in ("cls", "radiomics") for j in jobs.values()):
        report = layout.report_folder(CLS_EVALUATION_DIR) / "report.md"
        than = [str(Path(j.done["path"]) / (FINAL_CHECKPOINT if j.stage == "cls" else CLS_SUMMARY_FILE))
                for j in jobs.values() if j.stage in ("cls", "radiomics")]
        # the inline grid over finished runs: it trains nothing, runs the real-vs-synthetic shortcut checks and writes
        # the cross-validated report (neonet_evaluate DATASET cls)
        grid = ["neonet_experiment", ds, "--archs", *archs, *(["radiomics"] if radiomics else []), "--ratios",
                *[r if r == AUTO_RATIO else f"{r:g}" for r in ratios], "--arms", *arms, "--folds", *map(str, folds),
                "--crop-source", crop_source, "--launcher", "inline", *common]
        grid += (["--early-stopping", early_stopping] if early_stopping else [])
        grid += (["--allow-failed-gate"] if allow_failed_gate else []) + (["--no-shortcut"] if not shortcut else [])
        grid += (["--n-boot", str(int(n_boot))] if n_boot is not None else [])
        add("evaluate", None, grid, {"kind": "newer", "path": str(report), "than": than})
    _wire(jobs, folds, autoencoder, pred)
    graph = Graph(ds, jobs, conf_name, folds)
    graph.topological()  # refuses a cycle now, not at run time
    return graph


def _wire(jobs: dict[str, Job], folds: list[int], autoencoder: str, pred: bool) -> None:
    """Apply :data:`DEPENDS` to the jobs that exist."""
    by_stage: dict[str, list[Job]] = {}
    for j in jobs.values():
        by_stage.setdefault(j.stage, []).append(j)
    for j in jobs.values():
        deps: list[str] = []
        for stage, scope in DEPENDS[j.stage]:
            if stage == "autoencoder":
                stage = autoencoder if j.stage == "ldm" else "vae"
            if stage == "masks" and not pred:
                continue
            if j.stage == "cls" and stage == "vae" and not j.tags["arch"].startswith("pattennet"):
                continue  # only PattenNet reads the fold's frozen VAE encoder
            if j.stage == "cls" and stage == "quality" and j.tags["ratio"] != AUTO_RATIO and j.tags["ratio"] <= 0:
                continue  # real patches only
            for other in by_stage.get(stage, []):
                if scope == "all" or other.fold == j.fold:
                    deps.append(other.name)
        j.deps = list(dict.fromkeys(deps))
