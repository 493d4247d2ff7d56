"""``neonet_evaluate DATASET gen``: NeoGen quality report per fold (Tables 3-4 shape) and a montage.

* **Generation quality (headline)**, per synthetic set of the fold, from
  :mod:`neonet_toolkit.evaluation.gen_quality`: held-out C2ST AUC per PNI class (real validation vs held-out
  synthetic; 0.5 = indistinguishable), FRD and KID in a standardised pyradiomics feature space with CIs from
  subsets without replacement, precision / recall / density / coverage, and the copy rate (memorisation) with a
  montage of the closest synthetic–training pairs; the same metrics for real validation vs real training as the
  reference row. The gate verdict (plans' ``gen_quality`` thresholds) is written beside the set as
  ``quality.json``, which NeoCls reads before it trains on the set.

* Reconstruction (Table 3): every trained autoencoder of the fold (the VAE, NeoGen; the VQ-VAE,
  QNeoGen, with its codebook usage) on the fold's **validation** patches (channel 0, in the
  patches' z-scored intensity scale), SSIM (3D) and PSNR, next to a trivial baseline that predicts
  the mean training patch for every case. LPIPS (per view, averaged) only with ``--lpips-weights
  PATH`` (a local torchvision AlexNet/VGG/SqueezeNet ``state_dict``) and the optional ``lpips``
  package; otherwise reported as not computed.
* Legacy (Table 4 shape, kept for comparison with earlier reports; no verdict rests on it): FID between the fold's real training patches (the set NeoGen imitates) and
  each synthetic set of the fold (one row per generator variant that was generated: NeoGen, NeoGen DM,
  QNeoGen, QNeoGen DM, mask-only, rectified flow; see ``neonet_generate --generator/--autoencoder/
  --conditioning/--sampler``), on axial, sagittal and coronal slices (slices with ≥ 5 % ROI) and their
  average, each with a 95 % percentile bootstrap CI over patches (``--n-boot``); also real validation vs real training patches as a reference for the same extractor
  (FID is biased upwards for small sets, so compare sets of similar size: the reference uses only the
  fold's few validation cases). Feature extractor: ``--fid-network pca`` (default, weight-free, in-domain; see
  :mod:`neonet_toolkit.evaluation.image_metrics`) or ``radimagenet`` / ``inception`` with
  ``--fid-weights PATH``.
* ``montage.png``: real source patch vs synthetic patch (channel 0) with the conditioning masks.

Outputs: ``neonet_results/<ds>/gen_evaluation__<plans>/fold_N/{gen_report.json, tables.md, montage.png,
copies_<set>.png}`` and ``<synthetic set folder>/quality.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from neonet_toolkit.evaluation.gen_quality import (
    PatchSet,
    RealReference,
    quality_report,
    reference_report,
    save_copy_montage,
)
from neonet_toolkit.evaluation.image_metrics import (
    VIEWS,
    LPIPSMetric,
    fid_per_view_with_ci,
    lpips_per_view,
    make_feature_extractor,
    psnr,
    ssim,
    view_axes,
)
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.generation.generate import load_synthetic_patch
from neonet_toolkit.networks.generative import (
    from_vae_output,
    load_fold_autoencoder,
    stage_checkpoint_path,
    to_vae_input,
)
from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
from neonet_toolkit.models.cls_results import case_labels
from neonet_toolkit.preprocessing.synthetic_sets import (
    gate_verdict,
    load_manifest,
    manifest_sha256,
    save_quality,
    synthetic_folder,
)
from neonet_toolkit.utilities.checkpoints import load_checkpoint
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.identifiers import (
    AUTOENCODERS,
    GEN_EVALUATION_DIR,
    PLANS_NAME,
    GenRunId,
    ResultLayout,
    parse_gen_stage_dir,
)
from neonet_toolkit.utilities.io import load_json, save_figure, save_json, save_text

logger = logging.getLogger(__name__)


def _stack_patches(folder, ids, loader):
    ims, labs = zip(*(loader(folder, i) for i in ids))
    return np.stack(ims).astype(np.float32), np.stack(labs)


AUTOENCODER_LABELS = {"vae": "NeoGen VAE", "vqvae": "QNeoGen VQ-VAE"}


@torch.no_grad()
def reconstruction_metrics(dataset, fold: int, device: str = "cpu", plans_name: str = PLANS_NAME,
                           lpips_weights: str | None = None, lpips_net: str = "alex") -> dict:
    """Table 3: every trained autoencoder of the fold (``vae``, ``vqvae``) on the validation patches, next to
    the mean-training-patch baseline."""
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    split = get_fold(load_splits(pp), fold)
    src = patch_folder(pp, "gt")
    val, val_lab = _stack_patches(src, split["val"], load_patch)
    train, _ = _stack_patches(src, split["train"], load_patch)
    kinds = [k for k in AUTOENCODERS if stage_checkpoint_path(layout, k, fold, plans_name).is_file()]
    if not kinds:
        raise FileNotFoundError(f"No trained autoencoder for fold {fold}: run `neonet_train {name} vae {fold}` "
                                f"(and/or vqvae) first.")
    x = torch.from_numpy(val[:, :1])
    data_range = float(x.max() - x.min())
    mean_patch = torch.from_numpy(train[:, :1].mean(0, keepdims=True)).expand_as(x)
    out = {"n_val_cases": len(split["val"]), "data_range": data_range, "autoencoders": kinds,
           "mean_patch_baseline": {"ssim": float(ssim(mean_patch, x, data_range).mean()),
                                   "psnr": float(psnr(mean_patch, x, data_range).mean())}}
    metric, tf, roi = None, None, val_lab[:, 0] > 0
    if lpips_weights:
        tf = NeoNetPlans(pp / NEONET_PLANS_FILE)["transpose_forward"]
        metric = LPIPSMetric(lpips_weights, lpips_net, device=device)
        base = lpips_per_view(val[:, 0], mean_patch[:, 0].numpy(), roi, tf, metric)
        out["mean_patch_baseline"].update(lpips=base["average"])
        out["lpips_network"], out["lpips_weights"] = lpips_net, str(lpips_weights)
    for kind in kinds:
        ae = load_fold_autoencoder(layout, fold, kind, device, plans_name)
        recs = []
        for s in range(0, len(x), 4):
            mu, _ = ae.encode_posterior(to_vae_input(x[s:s + 4], ae.config).to(device))
            recs.append(from_vae_output(ae.decode(mu).float().cpu(), ae.config))
        rec = torch.cat(recs)
        row = {"ssim": float(ssim(rec, x, data_range).mean()), "psnr": float(psnr(rec, x, data_range).mean()),
               "lpips": None, "lpips_per_view": None, "checkpoint": ae.checkpoint,
               "per_case_psnr": dict(zip(split["val"], psnr(rec, x, data_range).tolist()))}
        if kind == "vqvae":
            row["codebook"] = load_checkpoint(ae.checkpoint).get("extra", {}).get("codebook", {})
        if metric is not None:
            per_view = lpips_per_view(val[:, 0], rec[:, 0].numpy(), roi, tf, metric)
            row.update(lpips=per_view["average"], lpips_per_view=per_view)
        out[kind] = row
    if "vae" in out:  # written before the VQ-VAE existed: kept at the top level
        out["per_case_psnr"] = out["vae"]["per_case_psnr"]
    return out


def set_label(rid: GenRunId) -> str:
    """Table 4 row label of a synthetic set: the paper's names, with NeoNet's ablations in brackets."""
    label = ("QNeoGen" if rid.autoencoder == "vqvae" else "NeoGen") + (" DM" if rid.generator == "dm" else "")
    tags = []
    if rid.generator == "controlnet":
        tags.append("mask only" if rid.conditioning == "mask" else "mask + class")
    tags.append("rectified flow" if rid.objective == "rflow" else "DDIM")
    return f"{label} ({', '.join(tags)})"


def generation_metrics(dataset, fold: int, fid_network: str = "pca", fid_weights: str | None = None,
                       device: str = "cpu", plans_name: str = PLANS_NAME, pca_components: int = 8,
                       set_dir: str = "synthetic", n_boot: int = 200) -> dict:
    """Table 4 row of one synthetic set: FID per view and averaged, with percentile bootstrap CIs over patches
    (:func:`neonet_toolkit.evaluation.image_metrics.fid_per_view_with_ci`), and the real-validation reference."""
    layout = ResultLayout.for_dataset(dataset, plans_name)
    pp = layout.preprocessed
    plans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    split = get_fold(load_splits(pp), fold)
    syn_folder = synthetic_folder(layout, fold, plans_name, set_dir=set_dir)
    manifest = load_manifest(syn_folder)
    if not manifest["entries"]:
        raise ValueError(f"{syn_folder} has no synthetic entries; run neonet_generate with --ratio > 0.")
    src = patch_folder(pp, "gt")
    real, real_lab = _stack_patches(src, split["train"], load_patch)
    val, val_lab = _stack_patches(src, split["val"], load_patch)
    syn, syn_lab = _stack_patches(syn_folder, [e["id"] for e in manifest["entries"]], load_synthetic_patch)
    tf = plans["transpose_forward"]
    kw = {"n_components": pca_components} if fid_network == "pca" else {}

    def factory():
        return make_feature_extractor(fid_network, fid_weights, device=device, **kw)

    fid_syn = fid_per_view_with_ci(real[:, 0], real_lab[:, 0] > 0, syn[:, 0], syn_lab[:, 0] > 0, tf, factory, n_boot)
    fid_val = fid_per_view_with_ci(real[:, 0], real_lab[:, 0] > 0, val[:, 0], val_lab[:, 0] > 0, tf, factory, n_boot)
    roi_stats = {}
    for key, ims, labs in (("real_train", real, real_lab), ("synthetic", syn, syn_lab)):
        tum = labs[:, 1] > 0
        liv = (labs[:, 0] > 0) & ~tum
        roi_stats[key] = {"tumour_mean": float(ims[:, 0][tum].mean()), "organ_only_mean": float(ims[:, 0][liv].mean()),
                          "roi_std": float(ims[:, 0][labs[:, 0] > 0].std())}
    return {"set": set_dir, "label": set_label(parse_gen_stage_dir(set_dir) or GenRunId("synthetic")),
            "fid_network": fid_network, "fid_weights": fid_weights, "n_real": len(real), "n_synthetic": len(syn),
            "fid_synthetic_vs_real_train": fid_syn, "fid_real_val_vs_real_train": fid_val,
            "intensity": roi_stats, "manifest_settings": manifest.get("settings", {})}


def real_reference(layout: ResultLayout, fold: int, bin_width: float) -> RealReference:
    """The fold's real training and validation patches (the generator saw only the former) in the suite's
    feature space."""
    pp = layout.preprocessed
    split = get_fold(load_splits(pp), fold)
    src = patch_folder(pp, "gt")
    labels = case_labels(pp, "gt")
    sets = []
    for key in ("train", "val"):
        ims, labs = _stack_patches(src, split[key], load_patch)
        sets.append(PatchSet.from_patches(key, ims, labs, [labels[c] for c in split[key]], split[key]))
    spacing_xyz = list(NeoNetPlans(pp / NEONET_PLANS_FILE)["spacing"])[::-1]
    return RealReference.build(sets[0], sets[1], spacing_xyz, bin_width)


def quality_metrics(layout: ResultLayout, fold: int, ref: RealReference, settings: dict, set_dir: str,
                    out_folder: Path, plans_name: str = PLANS_NAME, axial_axis: int = 0) -> dict:
    """The suite for one synthetic set of the fold, its gate verdict, ``quality.json`` beside the set and a
    montage of its closest synthetic-training pairs."""
    syn_folder = synthetic_folder(layout, fold, plans_name, set_dir=set_dir)
    entries = load_manifest(syn_folder)["entries"]
    ids = [e["id"] for e in entries]
    syn, syn_lab = _stack_patches(syn_folder, ids, load_synthetic_patch)
    cand = PatchSet.from_patches(set_dir, syn, syn_lab, [int(e["label"]) for e in entries], ids)
    report = quality_report(ref, cand, settings["copy_quantile"], settings["n_subsets"], settings["subset_fraction"])
    record = {"set": set_dir, "fold": int(fold), **report, "settings": settings}
    record = load_json(save_quality(syn_folder, record))  # as NeoCls will read it: stamped with the manifest hash
    verdict = gate_verdict(record, settings, manifest_sha256(syn_folder), layout.dataset_name, fold)
    montage = save_copy_montage(ref, cand, report, out_folder / f"copies_{set_dir}.png", axial_axis,
                                title=f"{set_dir}: closest synthetic-training pairs (copy rate "
                                      f"{report['copy_rate']:.2f})")
    return {**record, "gate": verdict, "copy_montage": str(montage)}


def save_montage(dataset, fold: int, path: Path, n: int = 4, plans_name: str = PLANS_NAME,
                 set_dir: str = "synthetic") -> Path:
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    axis = view_axes(NeoNetPlans(pp / NEONET_PLANS_FILE)["transpose_forward"])["axial"]
    syn_folder = synthetic_folder(layout, fold, plans_name, set_dir=set_dir)
    entries = load_manifest(syn_folder)["entries"]
    # alternate minority / majority examples when both exist
    by_role = {r: [e for e in entries if e["role"] == r] for r in ("minority", "majority")}
    picked = [e for pair in zip(by_role["minority"], by_role["majority"]) for e in pair] or entries
    picked = (picked + [e for e in entries if e not in picked])[:n]
    fig = Figure(figsize=(6, 3 * len(picked)))
    axes = fig.subplots(len(picked), 2, squeeze=False)
    for row, e in enumerate(picked):
        real, lab = load_patch(patch_folder(pp, "gt"), e["source_case"])
        syn, _ = load_synthetic_patch(syn_folder, e["id"])
        tum_area = np.moveaxis(lab[1], axis, 0).reshape(lab.shape[1 + axis], -1).sum(1)
        k = int(np.argmax(tum_area))
        lo, hi = np.percentile(real[0][lab[0] > 0], [1, 99]) if (lab[0] > 0).any() else (real.min(), real.max())
        for col, (img, title) in enumerate(((real, f"real {e['source_case']}"),
                                            (syn, f"synthetic {e['id']} (PNI={e['label']}, {e['role']})"))):
            ax = axes[row, col]
            ax.imshow(np.take(img[0], k, axis=axis), cmap="gray", vmin=lo, vmax=hi)
            ax.contour(np.take(lab[0], k, axis=axis), levels=[0.5], colors="lime", linewidths=0.6)
            ax.contour(np.take(lab[1], k, axis=axis), levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{name} fold {fold}: real vs NeoGen (axial; green ROI, red tumour)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _fmt(v) -> str:
    return "n/a (no --lpips-weights)" if v is None else f"{v:.4f}"


def _ci(f: dict, key: str) -> str:
    ci = (f.get("ci") or {}).get(key)
    return f"{f[key]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _val_ci(m: dict, digits: int = 2) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    ci = m.get("ci")
    return f"{m['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _auc(row: dict | None) -> str:
    if not row:
        return "—"
    if row.get("auc") is None:
        return f"n/a ({row.get('reason', 'too few patches')})"
    return f"{row['auc']:.2f} [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}]"


def quality_markdown(quality: dict, reference: dict | None) -> list[str]:
    """The headline generation-quality table of one fold: one row per synthetic set, then the real reference."""
    first = next(iter(quality.values()))
    st = first["settings"]
    lines = ["Generation quality (headline). C2ST: AUC of a discriminator telling held-out synthetic patches from the "
             "fold's real validation patches, per PNI class (0.5 = indistinguishable) [DeLong 95 % CI]. FRD / KID: vs "
             f"the real training patches in a standardised radiomics space ({first['n_features']} features) [95 % CI, "
             "subsets without replacement]; FRD grows as sets shrink, compare rows of similar n. Copy rate: synthetic "
             f"patches closer (texture-residual NCC) to a training patch than the {st['copy_quantile']:.0%} of real "
             f"held-out cases. Gate: C2ST AUC <= {st['c2st_auc_max']:g} per class and copy rate <= "
             f"{st['copy_rate_max']:.0%}.", "",
             "| Method | n | C2ST PNI− ↓ | C2ST PNI+ ↓ | FRD ↓ | KID ↓ | precision | recall | density | coverage "
             "| copy rate ↓ | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for set_dir, q in quality.items():
        pc, p = q["c2st"]["per_class"], q["prdc"]
        gate = "pass" if q["gate"]["passed"] else "FAIL: " + "; ".join(q["gate"]["reasons"])
        label = set_label(parse_gen_stage_dir(set_dir) or GenRunId("synthetic"))
        lines.append(f"| {label} | {q['n_candidate']} | {_auc(pc.get('0'))} | {_auc(pc.get('1'))} | {_val_ci(q['frd'], 1)} | "
                     f"{_val_ci(q['kid'], 3)} | {_num(p['precision'])} | {_num(p['recall'])} | {_num(p['density'])} | "
                     f"{_num(p['coverage'])} | {q['copy_rate']:.2f} ({q['copy']['n_copies']}/{q['copy']['n']}) | {gate} |")
    if reference:
        p = reference["prdc"]
        lines.append(f"| real val vs real train (reference) | {reference['n_candidate']} | (reference) | (reference) | "
                     f"{_val_ci(reference['frd'], 1)} | {_val_ci(reference['kid'], 3)} | {_num(p['precision'])} | "
                     f"{_num(p['recall'])} | {_num(p['density'])} | {_num(p['coverage'])} | (reference) | |")
    return lines + [""]


def tables_markdown(report: dict) -> str:
    lines = []
    for fold, r in report["folds"].items():
        rec = r["reconstruction"]
        lines += [f"## fold {fold}", "", "Table 3 shape (autoencoder reconstruction, validation patches):", "",
                  "| Model | LPIPS ↓ | SSIM ↑ | PSNR ↑ |", "|---|---|---|---|"]
        for kind in rec.get("autoencoders", ["vae"]):
            row = rec[kind]
            lines.append(f"| {AUTOENCODER_LABELS[kind]} | {_fmt(row.get('lpips'))} | {row['ssim']:.4f} | "
                         f"{row['psnr']:.4f} |")
        lines += [f"| mean-patch baseline | {_fmt(rec['mean_patch_baseline'].get('lpips'))} | "
                  f"{rec['mean_patch_baseline']['ssim']:.4f} | {rec['mean_patch_baseline']['psnr']:.4f} |", ""]
        cb = (rec.get("vqvae") or {}).get("codebook")
        if cb:
            lines += [f"VQ-VAE codebook over the training patches: perplexity {cb['perplexity']:.2f} of "
                      f"{cb['num_embeddings']} codes, {cb['dead_codes']} dead.", ""]
        if r.get("quality"):
            lines += quality_markdown(r["quality"], r.get("quality_reference"))
        sets = r.get("generation_sets") or ({"synthetic": r["generation"]} if r.get("generation") else {})
        if sets:
            g = next(iter(sets.values()))
            ref = g["fid_real_val_vs_real_train"]
            lines += [f"Legacy Table 4 shape (PCA-feature FID rewards smooth images and is biased by set size; no verdict "
                      f"rests on it) (FID vs the fold's real training patches, feature extractor: {g['fid_network']}; "
                      "not comparable to Inception FID unless inception weights were used; [95% bootstrap CI over "
                      f"patches, {ref.get('n_boot', 0)} replicates]):", "",
                      "| Method | FID ↓ (A) | FID ↓ (S) | FID ↓ (C) | FID ↓ (Avg.) | n synthetic |",
                      "|---|---|---|---|---|---|"]
            for set_dir, gs in sets.items():
                f = gs["fid_synthetic_vs_real_train"]
                lines.append(f"| {gs.get('label', 'NeoGen')} | " + " | ".join(_ci(f, v) for v in VIEWS)
                             + f" | {_ci(f, 'average')} | {gs['n_synthetic']} |")
            lines.append("| real val vs real train (reference) | " + " | ".join(_ci(ref, v) for v in VIEWS)
                         + f" | {_ci(ref, 'average')} | {r['reconstruction']['n_val_cases']} (real) |")
            lines.append("")
    return "\n".join(lines) + "\n"


def evaluate_gen(dataset, folds=(0,), fid_network: str = "pca", fid_weights: str | None = None, device: str = "cpu",
                 n_montage: int = 4, plans_name: str = PLANS_NAME, skip_generation: bool = False,
                 lpips_weights: str | None = None, lpips_net: str = "alex", n_boot: int = 200) -> dict:
    """Tables 3 and 4 per fold: every trained autoencoder and every synthetic set of the fold (NeoGen, its DM,
    VQ-VAE, mask-only and rectified-flow variants: whatever was generated)."""
    dev = str(get_device(device))
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name = layout.dataset_name
    report = {"dataset": name, "folds": {}}
    for fold in folds:
        out = layout.report_folder(GEN_EVALUATION_DIR, fold)
        r = {"reconstruction": reconstruction_metrics(layout, fold, dev, plans_name, lpips_weights, lpips_net)}
        if not skip_generation:
            sets = layout.synthetic_sets(fold)
            if not sets:  # names the command that makes the default set
                load_manifest(synthetic_folder(layout, fold, plans_name))
            plans = NeoNetPlans(layout.preprocessed / NEONET_PLANS_FILE)
            settings = plans.stage("gen_quality", None, torch.device(dev).type)
            axial = view_axes(plans["transpose_forward"])["axial"]
            ref = real_reference(layout, fold, settings["bin_width"])
            r["quality"] = {d: quality_metrics(layout, fold, ref, settings, d, out, plans_name, axial) for d in sets}
            r["quality_reference"] = reference_report(ref, settings["n_subsets"], settings["subset_fraction"])
            r["generation_sets"] = {d: generation_metrics(layout, fold, fid_network, fid_weights, dev, plans_name,
                                                          set_dir=d, n_boot=n_boot) for d in sets}
            main_set = "synthetic" if "synthetic" in sets else next(iter(sets))
            r["generation"] = r["generation_sets"][main_set]
            r["montage"] = str(save_montage(layout, fold, out / "montage.png", n_montage, plans_name, main_set))
        save_json(r, out / "gen_report.json")
        report["folds"][str(fold)] = r
        rec = r["reconstruction"]
        logger.info("fold %s: %s; mean-patch PSNR %.3f%s", fold,
                    ", ".join(f"{k} PSNR {rec[k]['psnr']:.3f} SSIM {rec[k]['ssim']:.4f}" for k in rec["autoencoders"]),
                    rec["mean_patch_baseline"]["psnr"],
                    "" if skip_generation else "; " + ", ".join(
                        f"{set_dir}: C2ST {q['c2st']['pooled']['auc'] if q['c2st']['pooled']['auc'] is not None else float('nan'):.3f}, "
                        f"copy rate {q['copy_rate']:.2f}, gate {'pass' if q['gate']['passed'] else 'FAIL'}"
                        for set_dir, q in r["quality"].items()) + "; legacy PCA-FID avg " + ", ".join(
                        f"{g['label']} {g['fid_synthetic_vs_real_train']['average']:.4f}"
                        for g in r["generation_sets"].values()))
        save_text(tables_markdown({"folds": {str(fold): r}}), out / "tables.md")
    if len(report["folds"]) > 0:
        summary = layout.report_folder(GEN_EVALUATION_DIR) / "summary.json"
        save_json(report, summary)
    return report


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--folds", type=int, nargs="+", default=[0], help="folds to evaluate (default 0)")
    parser.add_argument("--fid-network", default="pca", choices=["pca", "radimagenet", "inception"],
                        help="FID feature extractor (pca: weight-free in-domain fallback)")
    parser.add_argument("--fid-weights", default=None, help="local weights file for radimagenet/inception")
    parser.add_argument("--lpips-weights", default=None,
                        help="local torchvision backbone weights (state_dict) for LPIPS; needs neonet_toolkit[lpips]")
    parser.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    parser.add_argument("-device", "--device", default="auto")
    parser.add_argument("--n-montage", type=int, default=4)
    parser.add_argument("--reconstruction-only", action="store_true",
                        help="only Table 3 (autoencoders; no synthetic set needed)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates for the Table 4 FID CIs")


def evaluate_from_args(args):
    return evaluate_gen(args.dataset, args.folds, args.fid_network, args.fid_weights, args.device, args.n_montage,
                        skip_generation=args.reconstruction_only, lpips_weights=args.lpips_weights,
                        lpips_net=args.lpips_net, n_boot=args.n_boot)
