"""NeoGen inference: mask-conditioned synthetic TLCR patches that balance a fold's training set.

``generate_synthetic_set(dataset, fold, ratio)`` writes the set described in
:mod:`neonet_toolkit.preprocessing.synthetic_sets`. Each synthetic patch is conditioned on the real label
patch (and, with a class-conditional ControlNet, the PNI label) of one *training* case of the fold:

* minority entries: ``round(ratio * gap)`` patches, conditioned on the minority-class training
  cases in turn (ratio 1.0 = balanced 1:1, Table 2);
* majority entries (``n_majority``, or ``-1`` = as many as the minority entries): conditioned on
  majority-class training cases, so that "synthetic" is not a proxy for "positive".

A patch is ``[x * roi, x * tumour]`` (float32) with ``x`` the decoded channel-0 image and
``roi``/``tumour`` the masks of its conditioning label patch, plus that label patch (uint8) — the
TLCR format the classifier reads with ``load_patch``. Provenance (source case, seed, steps,
checkpoint, sampler, generator, autoencoder, objective, conditioning) is in the manifest entry and in
the patch file (``provenance``, a JSON string).

Generator variants (Table 4 and the ablations; :func:`resolve_variant`): ``generator`` ``controlnet``
(mask-conditioned NeoGen) or ``dm`` (the latent diffusion model alone, no mask control: the image is
sampled unconditionally and only masked by the source case's label); ``autoencoder`` ``vae`` (NeoGen) or
``vqvae`` (QNeoGen); ``objective`` ``eps`` (DDIM sampler) or ``rflow`` (rectified-flow sampler);
``conditioning`` ``mask_class`` or ``mask`` (ControlNet only). Each variant has its own set folder
(:func:`neonet_toolkit.utilities.identifiers.gen_stage_dir`); the default is ``synthetic``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neonet_toolkit.dataset.case_ids import safe_join
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.networks.diffusion import DiffusionObjective, ddim_sample, ddim_timesteps, rflow_timesteps
from neonet_toolkit.networks.generative import (
    FoldAutoencoder,
    build_controlnet,
    build_unet,
    controlled_unet_output,
    freeze,
    from_vae_output,
    label_to_condition,
    load_fold_autoencoder,
    stage_checkpoint_path,
)
from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
from neonet_toolkit.preprocessing.synthetic_sets import MANIFEST, synthetic_folder, synthetic_stage
from neonet_toolkit.training.gen_common import case_labels
from neonet_toolkit.utilities.checkpoints import check_upstream, load_checkpoint
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.identifiers import PLANS_NAME, SAMPLER_OF_OBJECTIVE, GenRunId, ResultLayout
from neonet_toolkit.utilities.io import load_json, save_json, save_npz

logger = logging.getLogger(__name__)

MAJORITY_SEED_OFFSET = 1_000_000
MAJORITY_ID_OFFSET = 50_000  # minority entries are syn_00000.., majority entries syn_50000..


@dataclass
class NeoGenModels:
    vae: torch.nn.Module            # the fold's autoencoder network (AutoencoderKL or VQVAE, see ``autoencoder``)
    unet: torch.nn.Module
    controlnet: torch.nn.Module | None  # None: the latent diffusion model alone (Table 4's "DM" rows)
    alphas_cumprod: torch.Tensor
    scale_factor: float
    vae_config: dict
    latent_shape: list
    class_conditional: bool
    checkpoint: str
    device: torch.device
    sampling: dict = field(default_factory=dict)
    upstream: dict = field(default_factory=dict)  # {"vae"|"vqvae": path, "ldm": path} the model was trained on
    autoencoder: str = "vae"
    diffusion: DiffusionObjective | None = None  # None: ε objective with ``alphas_cumprod`` (DDIM)
    run_id: GenRunId = field(default_factory=lambda: GenRunId("synthetic"))

    @property
    def objective(self) -> str:
        return self.diffusion.objective if self.diffusion is not None else "eps"

    @property
    def sampler(self) -> str:
        return SAMPLER_OF_OBJECTIVE[self.objective]


def resolve_variant(plans: NeoNetPlans, configuration: str | None, device_type: str, generator: str = "controlnet",
                    autoencoder: str | None = None, objective: str | None = None, conditioning: str | None = None,
                    sampler: str | None = None) -> GenRunId:
    """The synthetic-set id from the command line, with the plans' defaults for what is not given.

    The sampler follows the objective (ddim for eps, rflow for rectified flow): ``--sampler rflow`` alone picks
    the rectified-flow models, and an explicit mismatch is an error."""
    conf = plans.configuration(configuration, device_type)["name"]
    by_sampler = {v: k for k, v in SAMPLER_OF_OBJECTIVE.items()}
    if sampler is not None and sampler not in by_sampler:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {sorted(by_sampler)}.")
    if objective is None:
        objective = by_sampler[sampler or str(plans.stage("sampling", conf, device_type)["sampler"])]
    if sampler is not None and SAMPLER_OF_OBJECTIVE[objective] != sampler:
        raise ValueError(f"--sampler {sampler} does not match --objective {objective}: a model trained with objective "
                         f"{objective} is sampled with {SAMPLER_OF_OBJECTIVE[objective]}. Train the "
                         f"{by_sampler[sampler]} variant (`neonet_train DATASET ldm|controlnet FOLD --objective "
                         f"{by_sampler[sampler]}`) or drop one of the options.")
    autoencoder = autoencoder or str(plans.stage("ldm", conf, device_type)["autoencoder"])
    if generator == "dm":
        conditioning = "mask_class"
    elif conditioning is None:
        conditioning = "mask_class" if plans.stage("controlnet", conf, device_type)["class_conditional"] else "mask"
    return GenRunId("synthetic", autoencoder=autoencoder, objective=objective, conditioning=conditioning,
                    generator=generator)


def _variant_flags(variant) -> str:
    """The ``neonet_train`` options that select this variant's models (none for NeoGen's defaults)."""
    flags = [(k, v) for k, v, default in (("--autoencoder", variant.autoencoder, "vae"),
                                          ("--objective", variant.objective, "eps"),
                                          ("--conditioning", variant.conditioning, "mask_class"))
             if v != default]
    return "".join(f" {k} {v}" for k, v in flags)


def load_neogen_models(dataset, fold: int, device: str | torch.device = "cpu", plans_name: str = PLANS_NAME,
                       configuration: str | None = None, variant: GenRunId | None = None) -> NeoGenModels:
    """The fold's frozen autoencoder, diffusion U-Net and (unless ``variant.generator == "dm"``) ControlNet,
    all from their checkpoint_final.pth. ``variant`` (a synthetic-set :class:`GenRunId`) picks the
    autoencoder, objective and conditioning; default: NeoGen (VAE, ε, mask + class)."""

    device = torch.device(device)
    variant = variant or GenRunId("synthetic")
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    ae = load_fold_autoencoder(layout, fold, variant.autoencoder, device, plans_name)
    if variant.generator == "controlnet":
        cn_path = stage_checkpoint_path(layout, variant.upstream("controlnet").name, fold, plans_name)
        if not cn_path.is_file():
            raise FileNotFoundError(
                f"{cn_path} not found: train it with `neonet_train {name} controlnet {fold}{_variant_flags(variant)}`.")
        cn = load_checkpoint(cn_path, device)
        ex = cn["extra"]
        check_upstream(cn.get("upstream"), {variant.autoencoder: ae.checkpoint, "ldm": ex["ldm_checkpoint"]},
                       f"ControlNet fold {fold} ({cn_path})",
                       f"Retrain it: `neonet_train {name} controlnet {fold}{_variant_flags(variant)} --overwrite`.")
        ldm_path, main_ckpt = Path(ex["ldm_checkpoint"]), cn
    else:
        ldm_path = stage_checkpoint_path(layout, variant.upstream("ldm").name, fold, plans_name)
        if not ldm_path.is_file():
            raise FileNotFoundError(f"{ldm_path} not found: train it with `neonet_train {name} ldm {fold} "
                                    f"--autoencoder {variant.autoencoder} --objective {variant.objective}`.")
        main_ckpt = None
    ldm = load_checkpoint(ldm_path, device)
    if main_ckpt is None:
        main_ckpt, ex = ldm, ldm["extra"]
        check_upstream(ldm.get("upstream"), {variant.autoencoder: ae.checkpoint}, f"LDM fold {fold} ({ldm_path})",
                       f"Retrain it: `neonet_train {name} ldm {fold} --autoencoder {variant.autoencoder} "
                       f"--objective {variant.objective} --overwrite`.")
    diffusion = DiffusionObjective(ldm["config"])  # checkpoints written before objectives existed are eps
    if diffusion.objective != variant.objective:
        raise ValueError(f"{ldm_path} was trained with objective {diffusion.objective}, not {variant.objective}.")
    latent_channels = int(ex["latent_channels"])
    unet = build_unet(ldm["config"], latent_channels)
    unet.load_state_dict(ldm["network"])
    controlnet = None
    class_conditional = False
    if variant.generator == "controlnet":
        class_conditional = bool(ex.get("class_conditional"))
        controlnet = build_controlnet(ldm["config"], cn["config"], latent_channels, int(ex["vae_downsampling"]),
                                      num_class_embeds=2 if class_conditional else None)
        controlnet.load_state_dict(cn["network"])
        controlnet = freeze(controlnet.to(device))
    plans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    conf_name = configuration or main_ckpt.get("configuration_name")
    try:
        sampling = dict(plans.stage("sampling", conf_name, device.type))
    except KeyError:
        sampling = {}
    alphas = diffusion.scheduler.alphas_cumprod.clone() if diffusion.objective == "eps" else torch.empty(0)
    checkpoint = str(cn_path if variant.generator == "controlnet" else ldm_path)
    upstream = {variant.autoencoder: str(ae.checkpoint)}
    if variant.generator == "controlnet":
        upstream["ldm"] = str(ldm_path)
    return NeoGenModels(vae=ae.network, unet=freeze(unet.to(device)), controlnet=controlnet,
                        alphas_cumprod=alphas, scale_factor=float(ex["scale_factor"]),
                        vae_config=ae.config, latent_shape=list(ex["latent_shape"]),
                        class_conditional=class_conditional, checkpoint=checkpoint, device=device,
                        sampling=sampling, upstream=upstream, autoencoder=variant.autoencoder, diffusion=diffusion,
                        run_id=variant)


def decode_latents(models: NeoGenModels, z: torch.Tensor) -> torch.Tensor:
    """Scaled diffusion latents → channel-0 images in the patches' z-scored intensity scale."""
    ae = FoldAutoencoder(models.autoencoder, models.vae, models.scale_factor, models.vae_config, models.checkpoint)
    return from_vae_output(ae.decode(z / models.scale_factor).float(), models.vae_config)


@torch.no_grad()
def generate_patch(models: NeoGenModels, label: np.ndarray, seed: int, steps: int, class_label: int | None = None,
                   eta: float = 0.0, progress: bool = False, sampler: str | None = None) -> np.ndarray:
    """One synthetic TLCR image patch (2, *crop) float32 conditioned on ``label`` (2, *crop).

    Deterministic: the same (models, label, seed, steps, class_label, eta) gives the same bits on a
    given device (noise drawn from a CPU ``torch.Generator`` seeded with ``seed``). ``steps`` is the number
    of denoiser calls. Without a ControlNet (the "DM" generator) the image ignores the label, which then only
    masks it into the TLCR format. ``sampler`` (ddim | rflow) must match the models' objective.
    """
    if sampler is not None and sampler != models.sampler:
        raise ValueError(f"sampler {sampler!r} does not match these models (objective {models.objective}, sampled "
                         f"with {models.sampler}).")
    dev = models.device
    gen = torch.Generator().manual_seed(int(seed))
    lab = torch.from_numpy(np.asarray(label))[None]
    if models.controlnet is not None:
        cond = label_to_condition(lab).to(dev)
        cls = None
        if models.class_conditional:
            if class_label is None:
                raise ValueError("This ControlNet is class-conditional: pass the PNI class label (0/1).")
            cls = torch.tensor([int(class_label)], dtype=torch.long, device=dev)

        def model_fn(x, t):
            return controlled_unet_output(models.unet, models.controlnet, x, t, cond, class_labels=cls)
    else:
        def model_fn(x, t):
            return models.unet(x=x, timesteps=t)

    shape = (1, *models.latent_shape)
    if models.diffusion is None:
        z = ddim_sample(model_fn, shape, models.alphas_cumprod, steps, gen, eta=eta, device=dev, progress=progress)
    else:
        z = models.diffusion.sample(model_fn, shape, steps, gen, eta=eta, device=dev, progress=progress)
    x = decode_latents(models, z)[0, 0].cpu().numpy()
    roi = (np.asarray(label[0]) > 0).astype(np.float32)
    tum = (np.asarray(label[1]) > 0).astype(np.float32)
    return np.stack([x * roi, x * tum]).astype(np.float32)


def check_steps(models: NeoGenModels, steps: int) -> None:
    """Validate a step count for the models' sampler before any work."""
    if models.objective == "eps":
        ddim_timesteps(steps, int(models.alphas_cumprod.shape[0]))
    else:
        rflow_timesteps(models.diffusion.scheduler, steps)


def plan_entries(train_labels: dict[str, int], ratio: float, n_majority: int = 0) -> tuple[dict, list[dict]]:
    """Class counts, gap and the (label, role, source_case, order) of every synthetic entry."""
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"--ratio must be in [0, 1] (share of the class gap to fill), got {ratio}.")
    counts = {c: sum(1 for v in train_labels.values() if v == c) for c in (0, 1)}
    if min(counts.values()) == 0:
        raise ValueError(f"The fold's training set has only one class ({counts}); nothing to balance.")
    minority = 1 if counts[1] <= counts[0] else 0
    majority = 1 - minority
    gap = counts[majority] - counts[minority]
    n_min = int(round(float(ratio) * gap))
    n_maj = n_min if int(n_majority) < 0 else int(n_majority)
    by_class = {c: sorted(k for k, v in train_labels.items() if v == c) for c in (0, 1)}
    entries = []
    for k in range(n_min):
        entries.append({"label": minority, "role": "minority", "source_case": by_class[minority][k % counts[minority]],
                        "order": k})
    for k in range(n_maj):
        entries.append({"label": majority, "role": "majority", "source_case": by_class[majority][k % counts[majority]],
                        "order": k})
    info = {"class_counts": {str(c): counts[c] for c in (0, 1)}, "minority_class": minority, "gap": gap}
    return info, entries


def generate_synthetic_set(dataset, fold: int, ratio: float = 1.0, n_majority: int = 0, steps: int | None = None,
                           seed: int = 0, eta: float = 0.0, device: str = "cpu", overwrite: bool = False,
                           plans_name: str = PLANS_NAME, configuration: str | None = None,
                           generator: str = "controlnet", autoencoder: str | None = None, objective: str | None = None,
                           conditioning: str | None = None, sampler: str | None = None, crop_source: str = "gt") -> Path:
    """Generate (or extend) the fold's synthetic set; returns its folder. See the module docstring.

    ``generator`` / ``autoencoder`` / ``objective`` / ``conditioning`` / ``sampler`` pick the generator variant
    (:func:`resolve_variant`; defaults from the plans = NeoGen); a variant other than the default writes its
    own set, e.g. ``synthetic_dm_vqvae__<plans>`` (NeoCls reads only ``synthetic``). ``crop_source="pred"``
    conditions every patch on the source case's out-of-fold NeoSeg mask patch (the end-to-end protocol) and
    writes the ``..._pred`` set; ``gt`` uses the ground-truth masks."""
    synthetic_stage(crop_source)  # validates crop_source before any work
    dev = get_device(device)
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    plans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    variant = resolve_variant(plans, configuration, dev.type, generator, autoencoder, objective, conditioning,
                              sampler)
    split = get_fold(load_splits(pp), fold)
    train_ids, val_ids = list(split["train"]), set(split["val"])
    models = load_neogen_models(layout, fold, dev, plans_name, configuration, variant)
    steps = int(steps or models.sampling.get("steps", 50))
    check_steps(models, steps)  # validates the step count before any work
    if eta and models.objective != "eps":
        raise ValueError("--eta applies to DDIM only; the rectified-flow sampler is deterministic (use --eta 0).")
    labels = case_labels(pp, train_ids)
    info, planned = plan_entries(labels, ratio, n_majority)
    src = patch_folder(pp, crop_source)
    missing = sorted({e["source_case"] for e in planned if not (src / f"{e['source_case']}.npz").is_file()})
    if missing:
        fix = ("train NeoSeg on every fold (`neonet_train " + name + " seg F`; its out-of-fold masks become the pred "
               "patches) or register a model with pred patches (neonet_toolkit.training.seg.masks.register_model)"
               if crop_source == "pred" else f"re-run `neonet_plan_and_preprocess -d {name}`")
        raise FileNotFoundError(f"fold {fold}: no {crop_source} TLCR mask patch for training case(s) {missing[:5]} in "
                                f"{src}; {fix}.")

    out = synthetic_folder(layout, fold, plans_name, crop_source, variant.name)
    settings = {"checkpoint": models.checkpoint, "checkpoint_sha1": file_sha1(models.checkpoint),
                "upstream_sha1": {k: file_sha1(v) for k, v in models.upstream.items()}, "steps": steps,
                "seed": int(seed), "eta": float(eta), "sampler": models.sampler, **variant_provenance(models)}
    existing = {}
    if (out / MANIFEST).is_file():
        old = load_json(out / MANIFEST)
        # sets written before the generator variants existed are NeoGen sets: same settings, fewer keys
        old_settings = {**variant_provenance(models), **old.get("settings", {})}
        if overwrite or old_settings != settings or old.get("train_ids") != sorted(train_ids):
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a synthetic set made with other settings ({old.get('settings')}); use --overwrite to "
                    "replace it.")
            for f in (out / "patches").glob("syn_*.npz"):
                f.unlink()
        else:
            existing = {(e["role"], e["order"]): e for e in old["entries"]
                        if (out / "patches" / f"{e['id']}.npz").is_file()}
    # keep every entry already generated with these settings (a later run with a lower ratio keeps the extras)
    wanted = {(e["role"], e["order"]): e for e in planned}
    for key, e in existing.items():
        wanted.setdefault(key, e)
    entries, todo = [], []
    for key in sorted(wanted, key=lambda k: (k[0] != "minority", k[1])):
        e = dict(wanted[key])
        if e["source_case"] in val_ids or e["source_case"] not in labels:
            raise RuntimeError(f"synthetic entry conditioned on {e['source_case']!r}, not a training case of fold {fold}")
        off = 0 if e["role"] == "minority" else MAJORITY_SEED_OFFSET
        e.update({"id": f"syn_{int(e['order']) + (0 if e['role'] == 'minority' else MAJORITY_ID_OFFSET):05d}",
                  "seed": int(seed) + off + int(e["order"]), "steps": steps, "checkpoint": models.checkpoint})
        entries.append(e)
        if key not in existing:
            todo.append(e)
    logger.info("fold %d: %s, gap %d -> %d synthetic entries (%d to generate, %d steps, %s masks)", fold,
                info["class_counts"], info["gap"], len(entries), len(todo), steps, crop_source)
    for e in tqdm(todo, desc=f"neonet_generate fold {fold}", disable=None):
        _, lab = load_patch(src, e["source_case"])
        img = generate_patch(models, lab, e["seed"], steps, class_label=e["label"], eta=eta)
        prov = {**{k: e[k] for k in ("id", "label", "role", "source_case", "seed", "steps", "checkpoint")},
                "sampler": models.sampler, **variant_provenance(models)}
        save_npz(out / "patches" / f"{e['id']}.npz", image=img, label=lab.astype(np.uint8),
                 provenance=np.array(json.dumps(prov)))
    manifest = {"fold": int(fold), "dataset": name, "set": variant.name, "crop_source": crop_source,
                "train_ids": sorted(train_ids),
                "excluded_val_ids": sorted(val_ids), "ratio": float(ratio), "settings": settings, **info,
                "entries": entries}
    save_json(manifest, out / MANIFEST)
    return out


def variant_provenance(models: NeoGenModels) -> dict:
    """Which generator made a set: recorded in its manifest settings and every patch's provenance."""
    rid = models.run_id
    return {"generator": rid.generator, "autoencoder": rid.autoencoder, "objective": rid.objective,
            "conditioning": rid.conditioning if rid.generator == "controlnet" else "none"}


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def load_synthetic_patch(folder: str | Path, entry_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (2, *crop) float32, label (2, *crop) uint8) of one synthetic entry."""

    with np.load(safe_join(Path(folder) / "patches", entry_id, ".npz")) as z:
        return z["image"], z["label"]
