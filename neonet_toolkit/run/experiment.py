"""neonet_experiment DATASET --archs pattennet resnet50 --ratios 0 1.0 --folds 0 1 2 3 4 [--launcher local|slurm]

Builds the experiment's graph of per-fold jobs (NeoSeg → out-of-fold masks; VAE → LDM → ControlNet → synthetic
set → its quality gate; every classifier run; the radiomics baseline; the evaluation at the end:
``neonet_toolkit.scheduling.graph``) and dispatches it:

* ``--dry-run`` prints the graph (job, fold, dependencies, estimated GPU memory and time) and the estimated wall
  time on 1..N GPUs; ``--status`` shows every job's state (finished, running, queued, failed with its log's tail);
* ``--launcher local`` (default): the jobs in dependency order on this machine; ``--gpus 0,1`` runs independent
  jobs side by side, one per GPU, ``--jobs N`` N at a time on the CPU (the thread rule splits the cores);
* ``--launcher slurm``: one SLURM job per graph job through submitit, ``afterok`` dependencies, resources from
  the planner's estimates (``--slurm-*`` to override), requeued on pre-emption, continuing from checkpoints;
* ``--launcher inline``: the NeoCls grid alone in this process, as below (what each radiomics job runs).

Finished jobs are skipped, a lock per job keeps two launches from running the same job, a failed job blocks
only its descendants, and launching again runs only what is missing.

The inline grid (architectures × real:synthetic ratios × folds), one fold at a time:

* a fold whose run finished (``checkpoint_final.pth``: the ``model`` rule of ``ResultLayout``) is skipped;
* a fold with only ``checkpoint_latest.pth`` (interrupted) is resumed;
* for every fold with a synthetic set, the real-vs-synthetic shortcut check is computed;
* at the end ``neonet_evaluate DATASET cls`` writes the Table 2 / Table 5 shaped report;
* ``--repeats R`` runs repeated stratified CV (R partitions of the cases, new split seeds);
* ``--ratios ... auto`` adds runs whose ratio is chosen on each training fold's inner folds (nested protocol);
* a synthetic set that fails the quality gate (``neonet_evaluate DATASET gen``) fails its runs, unless
  ``--allow-failed-gate`` (recorded as overridden in each run's provenance).

A failing run is logged and the grid goes on; the exit status is non-zero if any failed.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from neonet_toolkit.evaluation.cls import evaluate_cls
from neonet_toolkit.evaluation.cls_shortcut import shortcut_check
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.experiment_planning.splits import add_repeats, load_splits, repeat_folds
from neonet_toolkit.models.cls_results import case_labels
from neonet_toolkit.networks.classifiers import canonical_arch
from neonet_toolkit.preprocessing.synthetic_sets import synthetic_folder
from neonet_toolkit.run.common import add_common, run_cli, setup_logging
from neonet_toolkit.scheduling.graph import build_graph, fmt_hours
from neonet_toolkit.scheduling.launchers import (
    LaunchError,
    cancel_slurm,
    check_gpu_memory,
    experiment_status,
    format_status,
    run_local,
    submit_slurm,
    wait_slurm,
)
from neonet_toolkit.training.cls import ClsTrainer
from neonet_toolkit.training.cls_data import parse_ratio
from neonet_toolkit.training.radiomics import (
    RadiomicsUnavailable,
    radiomics_run_name,
    run_late_fusion,
    run_radiomics_baseline,
)
from neonet_toolkit.training.resources import estimate_classifiers
from neonet_toolkit.utilities.identifiers import (
    ARMS,
    AUTO_RATIO,
    EARLY_STOPPING_MODES,
    LATEST_CHECKPOINT,
    PLANS_NAME,
    ResultLayout,
)

logger = logging.getLogger(__name__)


def run_experiment(dataset, archs: list[str], ratios: list[float | str], folds: list[int] | None = None,
                   device: str = "auto", configuration: str | None = None, epochs: int | None = None,
                   crop_source: str = "gt", early_stopping: str | None = None, evaluate: bool = True,
                   shortcut: bool = True, n_boot: int = 2000, plans_name: str = PLANS_NAME,
                   arms: list[str] | None = None, repeats: int | None = None,
                   allow_failed_gate: bool = False) -> dict:
    """Train every (arch, ratio, arm, fold) not yet finished, then evaluate. Returns a status dict.

    ``repeats`` R: repeated stratified CV: ``splits_final.json`` is extended to R partitions (new split
    seeds, existing folds unchanged, :func:`~neonet_toolkit.experiment_planning.splits.add_repeats`) and the
    default folds are all R×K of them. Each fold's classifier needs that fold's VAE (PattenNet) and
    synthetic set (ratio > 0): train them per fold as for repeat 0.

    ``arms`` (default ``["synthetic"]``, the paper's): the training-set arms run at every ratio > 0
    (``both``, ``oversample``, ``weighted`` are the controls; all arms of a ratio run equal steps).

    ``ratios`` may hold ``"auto"`` (chosen per training fold on the nested inner folds; needs the nested
    protocol). ``allow_failed_gate``: train on synthetic sets that failed the quality gate (recorded)."""
    from tqdm import tqdm


    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    if repeats is not None:
        add_repeats(pp, case_labels(pp, "gt"), int(repeats))  # the labels planning recorded for every case
    n_folds = len(load_splits(pp))
    folds = (list(range(n_folds)) if repeats is None else repeat_folds(pp, repeats)) if folds is None \
        else [int(f) for f in folds]
    want_radiomics = any(a.lower() == "radiomics" for a in archs)
    want_fusion = any(a.lower() == "fusion" for a in archs)  # radiomics + each deep run of the grid
    # validates names before training
    archs = [canonical_arch(a) for a in archs if a.lower() not in ("radiomics", "fusion")]
    deep_runs: list[str] = []
    ratios = [parse_ratio(r) for r in ratios]
    if AUTO_RATIO in ratios and early_stopping not in (None, "nested"):
        raise ValueError(f"--ratios auto chooses the ratio on the nested protocol's inner folds; --early-stopping "
                         f"{early_stopping} has none (use nested, the plans' default).")
    fixed = [r for r in ratios if r != AUTO_RATIO]
    status = {"trained": [], "resumed": [], "skipped": [], "failed": [], "shortcut": []}
    arms = list(arms or ["synthetic"])
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"Unknown arm(s) {bad}; choose from {list(ARMS)}.")
    grid = [(a, r, arm, f) for a in archs for r in ratios
            for arm in (arms if r == AUTO_RATIO or r > 0 else ["synthetic"]) for f in folds]
    for arch, ratio, arm, fold in tqdm(grid, desc="NeoCls grid", disable=None):
        tag = (f"{arch} ratio={ratio if ratio == AUTO_RATIO else format(ratio, 'g')}"
               f"{'' if arm == 'synthetic' else ' arm=' + arm} fold={fold}")
        try:
            probe = ClsTrainer(name, fold, arch=arch, synthetic_ratio=ratio, crop_source=crop_source,
                               early_stopping=early_stopping, configuration=configuration, device=device,
                               epochs=epochs, continue_training=True, arm=arm, allow_failed_gate=allow_failed_gate)
            out = probe.output_folder
            if probe.stage_dir not in deep_runs:
                deep_runs.append(probe.stage_dir)
            if layout.is_finished("model", out):
                logger.info("skip %s: finished (%s)", tag, out)
                status["skipped"].append(tag)
                continue
            kind = "resumed" if (out / LATEST_CHECKPOINT).is_file() else "trained"
            logger.info("%s %s -> %s", "resume" if kind == "resumed" else "train", tag, out)
            probe.run()
            status[kind].append(tag)
        except Exception as e:  # keep the grid going; report at the end
            logger.error("FAILED %s: %s", tag, e)
            status["failed"].append(f"{tag}: {e}")
    if want_radiomics:

        try:
            run_radiomics_baseline(layout, folds, crop_source, plans_name=plans_name)
            status["trained"].append(f"radiomics folds={folds}")
        except RadiomicsUnavailable as e:
            logger.warning("radiomics baseline skipped: %s", e)
            status["skipped"].append(f"radiomics: {e}")
        except Exception as e:
            logger.error("FAILED radiomics baseline: %s", e)
            status["failed"].append(f"radiomics: {e}")
    if want_fusion:
        radiomics_run = radiomics_run_name(crop_source)
        for run in deep_runs:
            try:
                run_late_fusion(layout, run, radiomics_run, folds, plans_name=plans_name)
                status["trained"].append(f"fusion {run} + {radiomics_run} folds={folds}")
            except FileNotFoundError as e:
                logger.warning("fusion skipped: %s", e)
                status["skipped"].append(f"fusion {run}: {e}")
            except Exception as e:
                logger.error("FAILED fusion %s: %s", run, e)
                status["failed"].append(f"fusion {run}: {e}")
    if shortcut and any(r > 0 for r in fixed):

        for fold in folds:
            if not layout.is_finished("synthetic_set", synthetic_folder(layout, fold, plans_name, crop_source)):
                continue
            try:
                res = shortcut_check(name, fold, max(fixed), crop_source, plans_name=plans_name)
                status["shortcut"].append({"fold": fold, "auc": (res.get("all") or {}).get("auc"),
                                           "warning": res["warning"]})
            except Exception as e:
                logger.error("shortcut check fold %d failed: %s", fold, e)
                status["failed"].append(f"shortcut fold {fold}: {e}")
    if evaluate:
        try:
            status["evaluation"] = evaluate_cls(name, n_boot=n_boot, plans_name=plans_name)["output"]
        except FileNotFoundError as e:
            logger.error("evaluation skipped: %s", e)
            status["failed"].append(f"evaluation: {e}")
    logger.info("grid: %d trained, %d resumed, %d skipped, %d failed", len(status["trained"]),
                len(status["resumed"]), len(status["skipped"]), len(status["failed"]))
    return status


def _ratio_arg(value: str) -> float | str:
    try:
        return parse_ratio(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset id or name, e.g. 501")
    p.add_argument("--archs", nargs="+", default=["pattennet"], help="architectures (see neonet_train ... cls --help), plus "
                   "radiomics (optional extra) and fusion (late fusion of radiomics with each deep run)")
    p.add_argument("--ratios", nargs="+", type=_ratio_arg, default=[0.0, 1.0],
                   help="synthetic ratios, e.g. 0 0.25 0.5 0.75 1.0; auto: chosen per training fold on the nested "
                        "inner folds among the plans' cls.ratio_candidates")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="folds (default: all)")
    p.add_argument("-device", "--device", default="auto")
    p.add_argument("--configuration", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--crop-source", dest="crop_source", choices=("gt", "pred"), default="gt")
    p.add_argument("--early-stopping", dest="early_stopping", choices=EARLY_STOPPING_MODES, default=None,
                   help="model selection (default: the plans' cls.early_stopping, nested); val = paper protocol "
                        "(optimistic)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["synthetic"],
                   help="training-set arms at every ratio > 0: synthetic (paper) and the controls both, "
                        "oversample, weighted (equal optimizer steps)")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeated stratified CV: extend splits_final.json to R partitions with new split seeds "
                        "(existing folds unchanged) and run all R x K folds")
    p.add_argument("--allow-failed-gate", dest="allow_failed_gate", action="store_true",
                   help="train on synthetic sets that failed the quality gate (C2ST realism / copy rate of "
                        "`neonet_evaluate DATASET gen`); recorded as overridden in each run's provenance")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    p.add_argument("--no-shortcut", dest="shortcut", action="store_false")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=2000)
    g = p.add_argument_group("the job graph and its launchers")
    g.add_argument("--launcher", choices=("local", "slurm", "inline"), default="local",
                   help="local: the graph's jobs on this machine (default); slurm: one SLURM job per graph job "
                        "(submitit); inline: the NeoCls grid alone in this process")
    g.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the graph (jobs, dependencies, estimates) and the estimated wall time; run nothing")
    g.add_argument("--status", action="store_true", help="each job's state (finished, running, queued, failed)")
    g.add_argument("--cancel", action="store_true", help="scancel this experiment's SLURM jobs")
    g.add_argument("--gpus", default=None, help="local: GPUs to use side by side, e.g. 0,1 (one job per GPU)")
    g.add_argument("--jobs", type=int, default=1, help="local, no --gpus: jobs side by side on the CPU (default 1)")
    g.add_argument("--no-seg", dest="seg", action="store_false",
                   help="leave NeoSeg and its out-of-fold masks out of the graph")
    g.add_argument("--seg-arch", dest="seg_arch", default=None, help="NeoSeg architecture (default: the plans')")
    g.add_argument("--seg-gpus", dest="seg_gpus", type=int, default=1,
                   help="GPUs per NeoSeg job (nnU-Net's -num_gpus, DDP on one node); each such job asks SLURM for "
                        "that many GPUs, and the local launcher gives it that many of --gpus")
    g.add_argument("--autoencoder", choices=("vae", "vqvae"), default="vae", help="NeoGen's autoencoder")
    g.add_argument("--stage-args", dest="stage_args", action="append", default=None, metavar="STAGE='ARGS'",
                   help="extra options for one stage's command, e.g. seg='--iterations 2 --val-iterations 1'")
    g.add_argument("--gpu-memory-gb", dest="gpu_memory_gb", type=float, default=None,
                   help="refuse, before anything starts, a job whose estimated GPU memory exceeds this")
    g.add_argument("--estimate-gpus", dest="estimate_gpus", type=int, default=None,
                   help="--dry-run: also estimate the wall time on this many GPUs")
    g.add_argument("--slurm-partition", dest="slurm_partition", default=None)
    g.add_argument("--slurm-account", dest="slurm_account", default=None)
    g.add_argument("--slurm-extra", dest="slurm_extra", nargs="+", default=None, metavar="KEY=VALUE",
                   help="more #SBATCH options, e.g. qos=high constraint=a100")
    g.add_argument("--slurm-gpus", dest="slurm_gpus", type=int, default=1,
                   help="GPUs per GPU job (--gres=gpu:N; 0: none, e.g. a CPU cluster)")
    g.add_argument("--slurm-time", dest="slurm_time", type=int, default=None,
                   help="minutes per job (default: the estimate x 1.5 + 15)")
    g.add_argument("--slurm-mem", dest="slurm_mem", default=None, help="memory per job, e.g. 32G (default: from the "
                   "estimate)")
    g.add_argument("--slurm-cpus", dest="slurm_cpus", type=int, default=None, help="CPUs per job")
    g.add_argument("--wait", action="store_true", help="slurm: wait until every submitted job has ended")
    add_common(p)
    return p


def _stage_args(items: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items or []:
        stage, sep, rest = item.partition("=")
        if not sep or not stage:
            raise argparse.ArgumentTypeError(f"--stage-args wants STAGE='ARGS' (e.g. seg='--iterations 2'), got {item!r}")
        out.setdefault(stage, []).extend(shlex.split(rest))
    return out


def graph_from_args(a):
    """The job graph of the parsed command line (the API behind ``--dry-run``, ``--status`` and the launchers)."""
    archs = [a_.lower() if a_.lower() == "radiomics" else canonical_arch(a_) for a_ in a.archs]
    if "fusion" in archs:
        raise LaunchError("late fusion is fit-free and takes seconds: run `neonet_experiment ... --archs <deep archs> "
                          "fusion --launcher inline` after the graph has finished.")
    folds = a.folds
    if a.repeats is not None:  # repeated stratified CV: extend the splits, default folds = all R x K
        pp = ResultLayout.for_dataset(a.dataset).preprocessed
        add_repeats(pp, case_labels(pp, "gt"), int(a.repeats))
        folds = folds if folds is not None else repeat_folds(pp, a.repeats)
    configuration = a.configuration or NeoNetPlans(
        ResultLayout.for_dataset(a.dataset).preprocessed / NEONET_PLANS_FILE).default_configuration(
        "cpu" if a.device == "cpu" else "cuda")
    deep = [x for x in archs if x != "radiomics"]
    # per-architecture costs feed the dry run and the SLURM resources; --status and --cancel need only the jobs
    quick = a.status or a.cancel
    cls_estimates = estimate_classifiers(a.dataset, configuration, deep) if deep and not quick else None
    return build_graph(a.dataset, archs, a.ratios, folds, crop_source=a.crop_source, arms=a.arms, seg=a.seg,
                       seg_arch=a.seg_arch, seg_gpus=a.seg_gpus, autoencoder=a.autoencoder,
                       early_stopping=a.early_stopping, configuration=a.configuration, device=a.device,
                       epochs=a.epochs, stage_args=_stage_args(a.stage_args), allow_failed_gate=a.allow_failed_gate,
                       evaluate=a.evaluate, shortcut=a.shortcut, n_boot=a.n_boot, cls_estimates=cls_estimates,
                       target="cpu" if a.device == "cpu" else "cuda")


def launch_from_args(a) -> int:
    graph = graph_from_args(a)
    run_dir = ResultLayout.for_dataset(a.dataset).experiment_folder
    if a.dry_run:
        print(graph.table())
        n = max([1, 2, 4, 8, 16] + [a.estimate_gpus or 1])
        counts = sorted({g for g in (1, 2, 4, 8, 16, a.estimate_gpus or 1) if g <= n})
        print(f"\nconfiguration {graph.configuration}: {len(graph.jobs)} jobs, {len(graph.pending())} to run; estimated "
              "wall time of what is left (list scheduling, longest path first; GPU time on the planner's reference "
              "GPU, CPU jobs not counted):")
        one = graph.wall_hours(1, only_pending=True)
        for g in counts:
            w = graph.wall_hours(g, only_pending=True)
            print(f"  {g:>2} GPU{'s' if g > 1 else ' '}: {fmt_hours(w):>8}" + (f"  ({one / w:.1f}x)" if w > 0 else ""))
        print(f"  critical path: {fmt_hours(graph.critical_path_hours())}")
        return 0
    if a.status:
        print(format_status(experiment_status(graph, run_dir)))
        return 0
    if a.cancel:
        ids = cancel_slurm(run_dir)
        print(f"cancelled SLURM jobs: {' '.join(ids) or 'none'}")
        return 0
    check_gpu_memory(graph, a.gpu_memory_gb)
    if a.launcher == "slurm":
        ids = submit_slurm(graph, run_dir, partition=a.slurm_partition, account=a.slurm_account, extra=a.slurm_extra,
                           gpus_per_job=a.slurm_gpus, time_min=a.slurm_time, mem=a.slurm_mem,
                           cpus_per_task=a.slurm_cpus)
        print(f"submitted {len(ids)} SLURM jobs; state: neonet_experiment {a.dataset} --status (logs in {run_dir})")
        if a.wait:
            states = wait_slurm(graph, run_dir, ids)
            bad = {n: s for n, s in states.items() if s != "finished"}
            print(format_status(experiment_status(graph, run_dir)))
            return 1 if bad else 0
        return 0
    res = run_local(graph, run_dir, slots=a.jobs, gpus=[g for g in (a.gpus or "").split(",") if g] or None)
    if res["failed"] or res["blocked"] or res["busy"]:
        print(format_status(experiment_status(graph, run_dir)), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    result = {}
    if args.launcher != "inline" or args.dry_run or args.status or args.cancel:
        rc = {}
        rc_code = run_cli(lambda a: rc.update(code=launch_from_args(a)), args)
        return rc_code or rc.get("code", 0)

    def _run(a):
        result.update(run_experiment(a.dataset, a.archs, a.ratios, a.folds, a.device, a.configuration, a.epochs,
                                     a.crop_source, a.early_stopping, a.evaluate, a.shortcut, a.n_boot,
                                     arms=a.arms, repeats=a.repeats, allow_failed_gate=a.allow_failed_gate))

    rc = run_cli(_run, args)
    if rc == 0 and result.get("failed"):
        print("failed runs:\n  " + "\n  ".join(result["failed"]), file=sys.stderr)
        return 1
    if rc == 0 and result.get("evaluation"):
        print(Path(result["evaluation"]) / "report.md")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
