"""A locked NeoNet model that travels: export to a zip, verify, install, or open for prediction.

A model package mirrors the toolkit's own result layout, so that an extracted package *is* a set of result folders
``neonet_predict`` reads unchanged::

    manifest.json                       every file with its sha256 and size, versions, folds, calibration, ...
    MODEL_CARD.md                       generated from the manifest (:mod:`neonet_toolkit.models.model_card`)
    nnUNet_preprocessed/<ds>/           neonet_plans.json, dataset.json, dataset_fingerprint.json, the nnU-Net plans
                                        named in neonet_plans.json, neonet_tlcr/gt/metadata.json
    nnUNet_results/<ds>/<model>/        the NeoSeg model folder: plans.json, dataset.json, fold_k/checkpoint_final.pth
    neonet_results/<ds>/<run>__<plans>/ the classifier run's folds (checkpoint, cls_summary.json, oof_predictions.csv),
                                        the fold VAEs of a PattenNet run, best_configuration.json, neoseg_model.json

Import is hostile-input-safe: no member may leave the target folder (``..``, absolute paths, drive letters,
backslashes, symlinks and other special entries are refused), the member list must equal the manifest's (no extra,
no missing file), every sha256 and size is checked before anything is loaded, and every checkpoint then goes through
the allow-listed ``weights_only=True`` loaders (nnU-Net checkpoints: :func:`~neonet_toolkit.models.seg
.check_model_folder`; NeoNet checkpoints: :func:`~neonet_toolkit.utilities.checkpoints.load_checkpoint`) before
nnU-Net or the predictor ever sees them. A refusal is a :class:`PackageError` naming the file and the reason.

Unlike nnU-Net's ``nnUNetv2_export_model_to_zip``, a fold without ``validation/summary.json`` is exported (the file
is optional), and nnU-Net's pickles (``postprocessing.pkl``) are never packed.

The safe reading of a zip or folder (names, entry types, member list, size caps, hashes) is
:mod:`neonet_toolkit.models.package_io`; the manifest's versions, training data and performance records are
:mod:`neonet_toolkit.models.package_manifest`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from neonet_toolkit import paths
from neonet_toolkit.dataset.contract import load_dataset_json
from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.models import model_card
from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE
from neonet_toolkit.models.package_io import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PackageError,
    _check_hash,
    _check_member_name,
    _copy_folder,
    _extract_zip,
    _is_zip,
    _sha256_file,
    _verify_folder_hashes,
)
from neonet_toolkit.models.package_manifest import _performance, _training_data, _versions
from neonet_toolkit.models.seg import (
    REGISTERED_MODEL_FILE,
    check_model_folder,
    default_model_folder,
    model_folds,
    registered_model,
)
from neonet_toolkit.networks.classifiers import needs_vae
from neonet_toolkit.preprocessing.patches import patch_folder
from neonet_toolkit.utilities.checkpoints import UnsafeCheckpointError, load_checkpoint, verify_checkpoint
from neonet_toolkit.utilities.identifiers import (
    FINAL_CHECKPOINT,
    NNUNET_VALIDATION_SUMMARY,
    PLANS_NAME,
    ResultLayout,
    check_safe_name,
)
from neonet_toolkit.utilities.io import load_json, save_json, save_text
from neonet_toolkit.version import __version__

logger = logging.getLogger(__name__)

MODEL_CARD = "MODEL_CARD.md"
ROOTS = ("nnUNet_preprocessed", "nnUNet_results", "neonet_results")
INSTALLED_DIR = "installed_model"  # neonet_results/<ds>/installed_model__<plans>/: manifest + card of an install
# optional files of an nnU-Net fold / model folder, packed when present (nnU-Net's own export packs them too)
_SEG_FOLD_OPTIONAL = ("progress.png", "debug.json", NNUNET_VALIDATION_SUMMARY)
_SEG_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_CLS_FOLD_FILES = (FINAL_CHECKPOINT, SUMMARY_FILE, OOF_FILE)


@dataclass
class PackageContext:
    """An opened (verified) package: its dataset, NeoSeg model folder, classifier run and folds, manifest, root."""

    dataset_name: str
    seg_model: Path
    cls_run: str
    folds: list | None
    manifest: dict
    root: Path
    env: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- verification
def _verify_checkpoints(root: Path, manifest: dict, where: str) -> None:
    """Every checkpoint through an allow-listed ``weights_only=True`` loader, before anything else loads it."""
    seg = manifest.get("seg_model")
    if seg:
        seg_folder = root / _check_member_name(seg, where)
        try:
            check_model_folder(seg_folder, manifest.get("seg_folds"))
        except UnsafeCheckpointError as e:
            raise PackageError(f"{where}: {e}") from None
        except FileNotFoundError as e:
            raise PackageError(f"{where}: the NeoSeg model in the package is incomplete ({e}).") from None
    for name in sorted(manifest["files"]):
        if not name.endswith(".pth"):
            continue
        f = root / name
        try:
            if name.split("/")[0] == "nnUNet_results":
                verify_checkpoint(f)  # nnU-Net's allow-list (nnU-Net loads these with weights_only=False)
            else:
                load_checkpoint(f)  # NeoNet's own weights-only loader
        except UnsafeCheckpointError as e:
            raise PackageError(f"{where}: {name}: {e}") from None


def _materialize(src: Path, dest: Path) -> dict:
    """Extract (zip) or copy (folder) a package into the empty folder ``dest``, verifying names, hashes and
    checkpoints; returns the manifest. Nothing is loaded before every hash matched."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"Model package {src} does not exist.")
    manifest = _extract_zip(src, dest) if _is_zip(src) else _copy_folder(src, dest) if src.is_dir() else None
    if manifest is None:
        raise PackageError(f"{src} is neither a zip file nor a folder; pass the zip `neonet_export_model` wrote or "
                           "the folder it was extracted into.")
    _verify_checkpoints(dest, manifest, str(src))
    return manifest


def verify_package(zip_or_dir) -> dict:
    """Check a package completely (names, links, member list, every sha256, every checkpoint with the allow-listed
    loaders) and return its manifest; :class:`PackageError` names the file and the reason otherwise."""
    src = Path(zip_or_dir)
    if src.is_dir():
        manifest = _verify_folder_hashes(src, str(src))
        _verify_checkpoints(src, manifest, str(src))
        return manifest
    with tempfile.TemporaryDirectory(prefix="neonet_verify_") as tmp:
        return _materialize(src, Path(tmp) / "package")


# ----------------------------------------------------------------------------- opening for prediction
def _package_env(root: Path) -> dict[str, str]:
    return {"nnUNet_raw": str(root / "nnUNet_raw"), **{k: str(root / k) for k in ROOTS}}


def _rewrite_registration(root: Path, manifest: dict, seg_model: Path) -> None:
    """A registered external NeoSeg model: its record names the model folder where it now lies (absolute)."""
    name = manifest["dataset_name"]
    f = root / "neonet_results" / name / REGISTERED_MODEL_FILE
    if f.is_file():
        rec = load_json(f)
        rec["model_folder"] = str(seg_model.resolve())
        save_json(rec, f)


@contextlib.contextmanager
def opened_package(zip_or_dir, work_folder=None) -> Iterator[PackageContext]:
    """Verify a package and make it the result folders for the duration of the block.

    A zip is extracted safely into ``work_folder`` (default: a temporary folder, removed afterwards); a folder is
    verified and used in place. ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results``/``neonet_results`` point
    at the package's roots inside the block and are restored afterwards."""
    src = Path(zip_or_dir)
    with contextlib.ExitStack() as stack:
        if src.is_dir():
            manifest = verify_package(src)
            root = src.resolve()
        else:
            if work_folder is None:
                base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="neonet_model_")))
            else:
                base = Path(work_folder)
                base.mkdir(parents=True, exist_ok=True)
            root = (base / "package").resolve()
            if root.exists():
                raise PackageError(f"{root} exists already: give an empty work folder for the extracted package.")
            try:
                manifest = _materialize(src, root)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)  # a refused package leaves nothing behind
                raise
            _rewrite_registration(root, manifest, root / manifest["seg_model"])
        ctx = PackageContext(dataset_name=manifest["dataset_name"], seg_model=root / manifest["seg_model"],
                             cls_run=manifest["cls_run"], folds=manifest.get("folds"), manifest=manifest, root=root,
                             env=_package_env(root))
        logger.info("Model package %s: %s, NeoSeg %s folds %s, NeoCls %s folds %s (verified: %d files)", src,
                    ctx.dataset_name, manifest["seg_model"], manifest["seg_folds"], ctx.cls_run,
                    manifest["cls_folds"], len(manifest["files"]))
        with paths.scoped_environ(ctx.env):
            yield ctx


def check_package_dataset(ctx: PackageContext, dataset) -> None:
    """Refuse a dataset (id or name) given alongside a package when it is not the package's dataset."""
    if dataset is None:
        return
    want = str(getattr(dataset, "dataset_name", dataset))
    name = ctx.dataset_name
    same = want == name
    if not same and not want.startswith("Dataset"):
        try:
            same = int(want) == int(name[7:10])
        except ValueError:
            same = False
    if not same:
        raise PackageError(f"The model package {ctx.root} holds a model of {name}, not of dataset {want!r}: leave -d "
                           "out (the package names its dataset) or pass the matching one.")


# ----------------------------------------------------------------------------- export
def _default_seg_model(layout: ResultLayout) -> Path:
    reg = registered_model(layout.dataset_name)
    if reg is not None:
        return Path(reg["model_folder"])
    default = default_model_folder(layout.dataset_name)
    if default.is_dir() and model_folds(default):
        return default
    trained = [m for m in layout.nnunet_model_folders() if model_folds(m)]
    if len(trained) == 1:
        return trained[0]
    raise PackageError(f"Which NeoSeg model of {layout.dataset_name} to export? "
                       + (f"Trained model folders: {[m.name for m in trained]}; pass one with -m."
                          if trained else f"None is trained (no {default} with a finished fold): train NeoSeg first."))


def _seg_files(model: Path, folds: list) -> list[Path]:
    out = [model / f for f in _SEG_MODEL_FILES if (model / f).is_file()]
    for f in folds:
        d = model / ResultLayout.fold_folder_name(f)
        out.append(d / FINAL_CHECKPOINT)
        out += [d / o for o in _SEG_FOLD_OPTIONAL if (d / o).is_file()]
    return out


def export_model(dataset, output_zip, cls_run: str | None = None, seg_model=None, folds=None) -> Path:
    """Write every artefact ``neonet_predict`` needs for ``dataset`` into one zip with a manifest and a model card.

    ``cls_run``: the classifier run (default: the deployable choice of ``neonet_find_best_configuration``, else the
    only trained run; the console command applies ``neonet_predict``'s full rule). ``seg_model``: the NeoSeg model
    folder (default: the registered or NeoSeg model). ``folds``: restrict both to these folds (default: every
    finished fold of each). Refuses to overwrite ``output_zip``."""
    layout = ResultLayout.for_dataset(dataset)
    name = layout.dataset_name
    out = Path(output_zip)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another output file.")
    pp = layout.preprocessed
    nplans = load_json(pp / NEONET_PLANS_FILE)
    dataset_json = load_dataset_json(pp / "dataset.json")
    roles = resolve_label_roles(dataset_json, name)
    image_channel = int((dataset_json.get("neonet") or {}).get("image_channel", 0))
    fingerprint = load_json(pp / "dataset_fingerprint.json")

    # NeoSeg
    reg = registered_model(name)
    seg = Path(seg_model) if seg_model is not None else _default_seg_model(layout)
    check_model_folder(seg, folds)  # also refuses a planted checkpoint before it is packed
    seg_folds = list(folds) if folds is not None else model_folds(seg)
    registered = reg is not None and Path(reg["model_folder"]).resolve() == seg.resolve()
    own = seg.resolve().parent == layout.nnunet_results.resolve()
    check_safe_name(seg.name, "NeoSeg model folder name", allow_double_underscore=True)
    seg_rel = f"nnUNet_results/{name}/{seg.name}"

    # NeoCls
    runs = layout.cls_runs()
    if cls_run is None:
        best = (load_json(layout.best_configuration_file()) if layout.best_configuration_file().is_file() else None)
        if best and best.get("predict_default") in runs:
            cls_run = best["predict_default"]
        elif len(runs) == 1:
            cls_run = runs[0]
        else:
            raise PackageError(f"Which NeoCls run of {name} to export? Trained runs: {runs or 'none'}; pass --cls-run.")
    if cls_run not in runs:
        raise PackageError(f"NeoCls run {cls_run!r} of {name} has no finished fold (trained runs: {runs}).")
    run_root = layout.stage_root(cls_run)
    have = sorted(ResultLayout.finished_folds(run_root))
    cls_folds = [int(f) for f in folds] if folds is not None else have
    lacking = [f for f in cls_folds if f not in have]
    if lacking:
        raise PackageError(f"NeoCls run {run_root} lacks finished fold(s) {lacking} (finished: {have}).")

    files: dict[str, Path] = {}  # package name -> source file

    def add(src: Path, rel: str) -> None:
        if not src.is_file():
            raise FileNotFoundError(f"{src} is needed in the model package but does not exist.")
        files[_check_member_name(rel, "export").as_posix()] = src

    def add_under(src: Path, root_name: str) -> None:
        env_root = layout.env[root_name]
        add(src, f"{root_name}/{src.resolve().relative_to(env_root.resolve()).as_posix()}")

    for f in (NEONET_PLANS_FILE, "dataset.json", "dataset_fingerprint.json", f"{nplans['nnunet_plans']}.json"):
        add_under(pp / f, "nnUNet_preprocessed")
    meta = patch_folder(pp, "gt") / "metadata.json"
    if meta.is_file():
        add_under(meta, "nnUNet_preprocessed")
    for f in _seg_files(seg, seg_folds):
        files[f"{seg_rel}/{f.relative_to(seg).as_posix()}"] = f
    cal = {}
    vae_files = []
    for f in cls_folds:
        fold_dir = layout.fold_folder(cls_run, f)
        for n in _CLS_FOLD_FILES:
            if (fold_dir / n).is_file() or n == FINAL_CHECKPOINT:
                add_under(fold_dir / n, "neonet_results")
        summary = load_json(fold_dir / SUMMARY_FILE) if (fold_dir / SUMMARY_FILE).is_file() else {}
        info = load_checkpoint(fold_dir / FINAL_CHECKPOINT).get("extra", {}).get("inference") or {}
        cal[str(f)] = {k: summary.get(k, info.get(k)) for k in (
            "calibration", "threshold", "threshold_method", "threshold_source", "train_prevalence",
            "real_prevalence", "val_auc", "protocol", "selection_rule", "arch", "crop_source")}
        if needs_vae(info.get("arch") or summary.get("arch") or ""):
            vae = layout.checkpoint("vae", f)
            recorded = summary.get("vae_checkpoint")
            if recorded and Path(recorded).is_file():
                vae = Path(recorded)
            if vae.is_file():
                vae_files.append(vae)
    for v in vae_files:
        add_under(v, "neonet_results")
    if layout.best_configuration_file().is_file():
        add_under(layout.best_configuration_file(), "neonet_results")
    if registered:
        rec = dict(reg)
        rec["model_folder"] = seg_rel  # rewritten to the installed/extracted location on install/open
        rec["exported_from"] = str(Path(reg["model_folder"]))
        files[f"neonet_results/{name}/{REGISTERED_MODEL_FILE}"] = rec  # type: ignore[assignment]

    first = next(iter(cal.values()), {})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "toolkit_version": __version__,
        "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset_name": name, "plans_name": layout.plans_name, "nnunet_plans": nplans["nnunet_plans"],
        "seg_model": seg_rel, "seg_model_source": "registered external model" if registered else
        ("NeoSeg model of this dataset" if own else "model folder given with -m"),
        "seg_folds": seg_folds, "cls_run": cls_run, "cls_folds": cls_folds,
        "folds": list(folds) if folds is not None else None,
        "cls_arch": first.get("arch"), "protocol": first.get("protocol"),
        "selection_rule": first.get("selection_rule"),
        "calibration": cal,
        "label_roles": {"labels": dataset_json["labels"], **roles.to_dict()},
        "image_channel": image_channel,
        "crop_size": list(NeoNetPlans(pp / NEONET_PLANS_FILE).crop_size),
        "training_data": _training_data(layout, fingerprint, image_channel),
        "performance": _performance(run_root, cls_folds),
        "best_configuration": (load_json(layout.best_configuration_file())
                               if layout.best_configuration_file().is_file() else None),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tempfile.TemporaryDirectory(prefix="neonet_export_") as td:
            written: dict[str, dict] = {}
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for rel, src in sorted(files.items()):
                    if isinstance(src, dict):  # a generated file (the rewritten registration record)
                        gen = Path(td) / "generated.json"
                        save_json(src, gen)
                        src = gen
                    digest, size = _sha256_file(src)
                    zf.write(src, rel)
                    written[rel] = {"sha256": digest, "size": size}
                manifest["files"] = dict(written)
                card = Path(td) / MODEL_CARD
                save_text(model_card.render(manifest), card)
                digest, size = _sha256_file(card)
                zf.write(card, MODEL_CARD)
                manifest["files"][MODEL_CARD] = {"sha256": digest, "size": size}
                mf = Path(td) / MANIFEST
                save_json(manifest, mf)
                zf.write(mf, MANIFEST)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("Exported %s (NeoSeg %s folds %s, NeoCls %s folds %s, %d files) to %s", name, seg.name, seg_folds,
                cls_run, cls_folds, len(manifest["files"]), out)
    return out


# ----------------------------------------------------------------------------- install
_FOLD_PART = ResultLayout.parse_fold_folder_name


def _unit_of(name: str) -> str:
    """The part of the result folders one package file is installed as: a whole nnU-Net model folder, a whole fold
    folder, or the file itself (never a whole dataset folder: the user's other files there stay)."""
    parts = name.split("/")
    if parts[0] == "nnUNet_results" and len(parts) > 3:
        return "/".join(parts[:3])
    for i, p in enumerate(parts[:-1]):
        if i >= 2 and _FOLD_PART(p) is not None:
            return "/".join(parts[:i + 1])
    return name


def _same_content(staged: Path, target: Path) -> bool:
    """Whether an installed part already holds exactly the staged files (then replacing it changes nothing)."""
    if staged.is_file():
        return target.is_file() and not target.is_symlink() and _sha256_file(staged) == _sha256_file(target)
    if not target.is_dir() or target.is_symlink():
        return False
    a = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    b = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file() or p.is_symlink()}
    return a == b and all(_sha256_file(staged / n) == _sha256_file(target / n) for n in a)


def install_model(zip_or_dir, overwrite: bool = False) -> dict:
    """Install a package into the current ``nnUNet_preprocessed``/``nnUNet_results``/``neonet_results``.

    The package is extracted and verified in a staging folder inside the ``neonet_results`` root first; only then
    are its parts (model folders, fold folders, single files) moved into place, each existing part renamed aside
    first and restored if any later step fails, so a failure leaves the previous model intact. Parts that exist
    with other content need ``overwrite=True``. Returns the manifest."""
    src = Path(zip_or_dir)
    env = paths.ensure_environment()
    for k in ROOTS:
        env[k].mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}_{int(time.time() * 1000)}"
    staging = {k: env[k] / f".neonet_install_{token}" for k in ROOTS}
    backups: list[tuple[Path, Path]] = []  # (target, backup)
    placed: list[Path] = []
    try:
        pkg = staging["neonet_results"] / "package"
        manifest = _materialize(src, pkg)
        name = manifest["dataset_name"]
        check_safe_name(name, "dataset name", allow_double_underscore=True)
        units = sorted({_unit_of(n) for n in manifest["files"] if n.split("/")[0] in ROOTS})
        for u in units:
            if u.split("/")[1:2] != [name]:
                raise PackageError(f"{src}: {u!r} lies outside the package's dataset {name}. Refusing the package.")
        # the registration record names where the model will lie
        seg_target = env["nnUNet_results"] / Path(manifest["seg_model"]).relative_to("nnUNet_results")
        _rewrite_registration(pkg, manifest, seg_target)
        conflicts = []
        for u in units:
            root, rest = u.split("/", 1)
            target = env[root] / rest
            if (target.exists() or target.is_symlink()) and not _same_content(pkg / u, target):
                conflicts.append(str(target))
        if conflicts and not overwrite:
            raise PackageError(f"Installing {src} would replace {len(conflicts)} existing part(s) of {name}: "
                               f"{conflicts[:4]}{' ...' if len(conflicts) > 4 else ''}. Pass --overwrite "
                               "(overwrite=True) to replace them; nothing was changed.")
        # move each root's parts next to their targets (same file system: the final step is a rename)
        for k in ("nnUNet_preprocessed", "nnUNet_results"):
            if any(u.startswith(k + "/") for u in units):
                staging[k].mkdir(parents=True, exist_ok=True)
        for u in units:
            root, rest = u.split("/", 1)
            if root != "neonet_results":
                (staging[root] / rest).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(pkg / u), str(staging[root] / rest))
        for u in units:  # what is moved into place is what was verified (re-hash after a cross-device move)
            root, rest = u.split("/", 1)
            base = pkg if root == "neonet_results" else staging[root]
            rel_base = base / (u if root == "neonet_results" else rest)
            for n in [n for n in manifest["files"] if n == u or n.startswith(u + "/")]:
                if n.endswith(REGISTERED_MODEL_FILE):
                    continue  # rewritten above on purpose
                f = rel_base if n == u else rel_base / n[len(u) + 1:]
                digest, size = _sha256_file(f)
                _check_hash(n, digest, size, manifest, str(src))
        for u in units:
            root, rest = u.split("/", 1)
            target = env[root] / rest
            staged = (pkg / u) if root == "neonet_results" else (staging[root] / rest)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                backup = target.with_name(f".{target.name}.replaced_{token}")
                os.replace(target, backup)
                backups.append((target, backup))
            os.replace(staged, target)
            placed.append(target)
        layout = ResultLayout(name, manifest.get("plans_name") or PLANS_NAME, env=env)
        record = layout.report_folder(INSTALLED_DIR)
        save_json(manifest, record / MANIFEST)
        shutil.copyfile(pkg / MODEL_CARD, record / MODEL_CARD)
    except BaseException:
        for target in reversed(placed):  # roll back: the new parts out, the old ones back
            with contextlib.suppress(OSError):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        for target, backup in reversed(backups):
            with contextlib.suppress(OSError):
                os.replace(backup, target)
        raise
    finally:
        for d in staging.values():
            shutil.rmtree(d, ignore_errors=True)
    for _, backup in backups:
        if backup.is_dir():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)
    logger.info("Installed %s from %s: NeoSeg %s, NeoCls %s (%d parts%s)", name, src, seg_target, manifest["cls_run"],
                len(units), f", {len(backups)} replaced" if backups else "")
    return manifest
