"""The external-validation report of ``neonet_validate``: ``validation_report.md`` + ``.json``,
``validation_cases.csv`` and the figures (ROC, calibration, decision curve, dataset shift). Every section of the
markdown names the TRIPOD+AI (Collins et al., BMJ 2024) item it answers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from neonet_toolkit.evaluation.dataset_shift import SMD_SMALL, SMD_SUBSTANTIAL
from neonet_toolkit.evaluation.validation_stats import (
    COHORT_MIN_EVENTS,
    SUBGROUP_MIN_CASES,
    SUBGROUP_MIN_PER_CLASS,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.io import save_csv, save_figure, save_json, save_text


def plot_roc(y, p, disc: dict, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    fpr, tpr, _ = stats.roc_curve_points(y, p)
    d = disc["delong"]
    ax.step(fpr, tpr, where="post", label=f"AUC {disc['auc']:.3f} (DeLong 95 % CI {_int(d['ci_low'], d['ci_high'])})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"External ROC (n={disc['n']}, {disc['n_pos']} positive)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_calibration(y, p, cal: dict, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    cur = cal["curve"]
    if cur["observed"]:
        g = np.asarray(cur["grid"])
        ax.fill_between(g, cur["band_low"], cur["band_high"], alpha=0.25, label="95 % bootstrap band")
        ax.plot(g, cur["observed"], label="lowess")
    rc = stats.reliability_curve(y, p, 10)
    ok = np.asarray(rc["count"]) > 0
    ax.plot(np.asarray(rc["mean_predicted"])[ok], np.asarray(rc["observed"])[ok], "o", ms=4,
            label=f"10 bins (ECE {cal['ece']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(p, np.where(np.asarray(y) == 1, 1.02, -0.02), "|", color="grey", alpha=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed proportion")
    ax.set_title(f"Calibration: intercept {_fmt(cal['citl'].get('intercept'))}, slope "
                 f"{_fmt(cal['slope'].get('slope'))}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_decision_curve(dc: dict, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    t = dc["thresholds"]
    ax.plot(t, dc["model"], label="model")
    ax.plot(t, dc["treat_all"], label="treat all")
    ax.plot(t, dc["treat_none"], "k", lw=0.8, label="treat none")
    top = max(max(dc["model"]), max(dc["treat_all"]), 0.01)
    ax.set_ylim(-0.05 * top - 0.01, top * 1.15)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_shift(shift: dict, path: Path) -> None:
    items = [(k, v["smd"]) for k, v in shift["standardized_differences"].items()
             if v.get("smd") is not None and math.isfinite(v["smd"])]
    fig = Figure(figsize=(6, 0.4 * max(len(items), 3) + 1))
    ax = fig.subplots()
    if items:
        names, vals = zip(*items)
        ypos = np.arange(len(names))
        colors = ["tab:red" if abs(v) > SMD_SUBSTANTIAL else "tab:blue" for v in vals]
        ax.scatter(vals, ypos, c=colors)
        ax.set_yticks(ypos, names, fontsize=8)
    for x in (-SMD_SUBSTANTIAL, SMD_SUBSTANTIAL):
        ax.axvline(x, color="tab:red", ls="--", lw=0.8)
    for x in (-SMD_SMALL, SMD_SMALL):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("standardized difference (external - training)")
    ax.set_title("Dataset shift against the training fingerprint", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _fmt(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _ci(d: dict, key: str = "value") -> str:
    if d.get(key) is None:
        return "n/a"
    return f"{_fmt(d[key])} {_int(d.get('ci_low'), d.get('ci_high'))}"


def _int(lo, hi) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def write_report(out: str | Path, cohort: dict, analysis: dict, shift: dict | None, seg: dict | None,
                 meta: dict, apparent: dict | None = None) -> dict:
    """``validation_report.md`` + ``.json``, ``validation_cases.csv`` and the PNGs in ``out``. ``apparent``: the
    analysis of the recalibrated model on the same cases (labelled apparent)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    inc = [r for r in cohort["rows"] if r["status"] == "included"]
    y = np.asarray([r["label"] for r in inc], int)
    p = np.asarray([r["probability"] for r in inc], float)
    if analysis.get("discrimination", {}).get("auc") is not None:
        plot_roc(y, p, analysis["discrimination"], out / "roc.png")
        figures["roc"] = "roc.png"
    if "calibration" in analysis:
        plot_calibration(y, p, analysis["calibration"], out / "calibration.png")
        figures["calibration"] = "calibration.png"
        plot_decision_curve(analysis["decision_curve"], out / "decision_curve.png")
        figures["decision_curve"] = "decision_curve.png"
    if shift:
        plot_shift(shift, out / "dataset_shift.png")
        figures["dataset_shift"] = "dataset_shift.png"
    flags = {r["case_id"]: r["flags"] for r in (shift or {}).get("cases", [])}
    save_csv([{**r, "shift_flags": flags.get(r["case_id"], [])} for r in cohort["rows"]],
             out / "validation_cases.csv")
    report = {"meta": meta, "cohort": {"counts": cohort["counts"]}, "analysis": analysis, "dataset_shift": shift,
              "segmentation": seg, "recalibration": apparent, "figures": figures}
    save_json(_jsonable(report), out / "validation_report.json")
    save_text(render_markdown(report, cohort), out / "validation_report.md")
    return report


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def render_markdown(report: dict, cohort: dict) -> str:
    m, a, c = report["meta"], report["analysis"], report["cohort"]["counts"]
    L = [f"# External validation of {m.get('model', 'the model')}", "",
         f"Cohort `{m.get('cohort')}` ({m.get('images')}), {len(cohort['rows'])} case(s); model sha256 "
         f"`{m.get('model_sha256', 'n/a')}`; NeoNet {m.get('version', '')}. Generated by neonet_validate; every "
         "section names the TRIPOD+AI (2024) item it answers.", "",
         "## Participants and outcome events (TRIPOD+AI 21; missing data 11)", "",
         f"- included (a probability): **{c['included']}**", f"- no tumour found by NeoSeg: **{c['no_tumor']}** "
         "(no TLCR crop, no probability: excluded from AUC, calibration and the decision curve)",
         f"- probability withheld by another QC flag: {c['withheld']}", f"- neonet_predict failed: {c['failed']}"]
    for r in cohort["rows"]:
        if r["status"] != "included":
            L.append(f"  - `{r['case_id']}`: {r['status']}{' (' + r['reason'] + ')' if r['reason'] else ''}")
    if "error" in a:
        L += ["", f"**{a['error']}.**"]
        return "\n".join(L) + "\n"
    d, cal, t = a["discrimination"], a["calibration"], a["threshold"]
    L.append(f"- events among the included: {d['n_pos']} positive, {d['n_neg']} negative "
             f"(prevalence {_fmt(cal['observed_prevalence'])})")
    if min(d["n_pos"], d["n_neg"]) < COHORT_MIN_EVENTS:
        L.append(f"- sample size: fewer than {COHORT_MIN_EVENTS} events or non-events (the usual minimum for an "
                 "external validation, Collins et al. 2016): the CIs below are wide; read them, not the points.")
    L += ["", "## Discrimination (TRIPOD+AI 12e, 23a)", ""]
    if d["auc"] is None:
        L.append(f"**{d['reason']}** Calibration is still reported below.")
    else:
        L += [f"- AUC **{_fmt(d['auc'])}**; DeLong 95 % CI {_int(d['delong']['ci_low'], d['delong']['ci_high'])}; "
              f"stratified percentile bootstrap 95 % CI {_int(d['bootstrap']['ci_low'], d['bootstrap']['ci_high'])} "
              f"({d['bootstrap']['n_boot']} replicates, seed {d['bootstrap']['seed']})",
              "- ![ROC](roc.png)"]
    ci, sl = cal["citl"], cal["slope"]
    L += ["", "## Calibration (TRIPOD+AI 12e, 23a)", "",
          f"- calibration-in-the-large (intercept, slope fixed at 1): **{_fmt(ci.get('intercept'))}** "
          + (f"(95 % CI {_int(ci['ci_low'], ci['ci_high'])}; 0 = calibrated, < 0 = over-prediction)"
             if ci.get("intercept") is not None else f"({ci.get('reason')})"),
          f"- calibration slope: **{_fmt(sl.get('slope'))}** "
          + (f"(95 % CI {_int(sl['ci_low'], sl['ci_high'])}; 1 = ideal, < 1 = predictions too extreme)"
             if sl.get("slope") is not None else f"({sl.get('reason')})"),
          f"- observed/expected events: {cal['observed_events']} / {_fmt(cal['expected_events'], 1)} = "
          f"**{_fmt(cal['o_e_ratio'])}**",
          f"- Brier score {_fmt(cal['brier'])}; scaled Brier {_fmt(cal['scaled_brier'])} (1 - Brier / Brier of the "
          "prevalence alone); ECE (10 equal-width bins) " + _fmt(cal['ece']),
          f"- flexible calibration curve: lowess (frac {_fmt(cal['curve']['frac'], 2)}, no robustness iterations) with "
          f"a {cal['curve']['n_boot']}-replicate case-bootstrap band: ![calibration](calibration.png)"]
    L += ["", "## Clinical usefulness at the locked threshold (TRIPOD+AI 12e, 23a)", "",
          "The model's own decision rule (majority of the per-fold decisions, each fold's locked threshold); Wilson "
          "95 % CIs.", "", "| measure | value (95 % CI) | k / n |", "|---|---|---|"]
    for k in ("sensitivity", "specificity", "ppv", "npv"):
        L.append(f"| {k.upper() if len(k) == 3 else k} | {_ci(t[k])} | {t[k]['k']} / {t[k]['n']} |")
    dc = a["decision_curve"]
    L += ["", f"Decision curve (dcurves; thresholds {dc['thresholds'][0]:.2f}-{dc['thresholds'][-1]:.2f}): "
          "![decision curve](decision_curve.png)", "", "| threshold | model | treat all | treat none |",
          "|---|---|---|---|"]
    for th in (0.1, 0.2, 0.3, 0.4, 0.5):
        i = int(np.argmin(np.abs(np.asarray(dc["thresholds"]) - th)))
        L.append(f"| {dc['thresholds'][i]:.2f} | {_fmt(dc['model'][i])} | {_fmt(dc['treat_all'][i])} | "
                 f"{_fmt(dc['treat_none'][i])} |")
    if a.get("subgroups"):
        L += ["", "## Subgroups / centres (TRIPOD+AI 12d, 23b)", "",
              f"A subgroup with fewer than {SUBGROUP_MIN_CASES} cases or fewer than {SUBGROUP_MIN_PER_CLASS} of a "
              "class is marked: its estimates are imprecise.", "",
              "| column | value | n (pos) | AUC (DeLong CI) | intercept | slope | O/E | sensitivity | specificity "
              "| warning |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for col, gs in a["subgroups"].items():
            for g, r in gs.items():
                dd = r["discrimination"]
                auc = (f"{_fmt(dd['auc'])} {_int(dd['delong']['ci_low'], dd['delong']['ci_high'])}"
                       if dd["auc"] is not None else "undefined")
                L.append(f"| {col} | {g} | {r['n']} ({r['n_pos']}) | {auc} | "
                         f"{_fmt(r['calibration']['citl'].get('intercept'))} | "
                         f"{_fmt(r['calibration']['slope'].get('slope'))} | "
                         f"{_fmt(r['calibration']['o_e_ratio'])} | {_fmt(r['threshold']['sensitivity']['value'])} | "
                         f"{_fmt(r['threshold']['specificity']['value'])} | {r['warning'] or ''} |")
    seg = report.get("segmentation")
    if seg:
        L += ["", "## NeoSeg on the external labels (TRIPOD+AI 23a)", "",
              f"{seg['n_cases']} case(s) with an external label.", "", "| label | n | mean Dice | median | min |",
              "|---|---|---|---|---|"]
        for lab, v in seg["per_label"].items():
            L.append(f"| {lab} | {v['n']} | {_fmt(v['mean'])} | {_fmt(v['median'])} | {_fmt(v['min'])} |")
        L += ["", f"Classifier performance by segmentation quality (good: {seg['tumor_label']} Dice >= "
              f"{seg['good_dice']}):", ""]
        for name, r in seg.get("by_segmentation", {}).items():
            dd = r["discrimination"]
            L.append(f"- {name}: n={r['n']} ({r['n_pos']} positive), AUC {_fmt(dd['auc'])}, Brier "
                     f"{_fmt(r['calibration']['brier'])}{'; ' + r['warning'] if r['warning'] else ''}")
        diff = seg.get("auc_difference_good_minus_poor")
        if diff:
            L.append(f"- AUC difference good - poor {_fmt(diff['diff'])} (z test on DeLong SEs, p = "
                     f"{_fmt(diff['p_value'])})")
    sh = report.get("dataset_shift")
    if sh:
        L += ["", "## Dataset shift against the training fingerprint (TRIPOD+AI 16, 20c)", "", f"**{sh['statement']}**",
              "", "| feature | training mean [min, max] | external mean [min, max] | standardized difference |",
              "|---|---|---|---|"]
        for k, v in sh["standardized_differences"].items():
            if k == "foreground_intensity":
                L.append(f"| {k} (voxels) | {_fmt(v['train_mean'], 2)} (SD {_fmt(v['train_sd'], 2)}) | "
                         f"{_fmt(v['external_mean'], 2)} (SD {_fmt(v['external_sd'], 2)}) | {_fmt(v['smd'])} |")
            else:
                L.append(f"| {k} | {_fmt(v['train_mean'], 2)} [{_fmt(v['train_min'], 2)}, {_fmt(v['train_max'], 2)}] | "
                         f"{_fmt(v['external_mean'], 2)} "
                         f"[{_fmt(v['external_min'], 2)}, {_fmt(v['external_max'], 2)}] | "
                         f"{_fmt(v['smd'])} |")
        L += ["", "Per-case flags: " + (", ".join(f"{k} {v}" for k, v in sorted(sh["flag_counts"].items())) or "none")
              + " (per case in validation_cases.csv). ![shift](dataset_shift.png)"]
    rc = report.get("recalibration")
    if rc:
        u = rc["update"]
        L += ["", "## Model updating (TRIPOD+AI 12f, 24)", "",
              f"`--recalibrate {u['method']}` fitted logit p' = {u['a']:.4f} + {u['b']:.4f} logit p on these "
              f"{u['n']} cases and wrote a NEW model version: `{rc['model_zip']}` (parent model sha256 "
              f"`{rc['parent_model_sha256']}`; provenance in its manifest.json `model_version` and "
              "recalibration.json). Its per-fold calibration and thresholds are updated through the same monotone "
              "map, so every per-fold decision is unchanged (only a fold tie, decided by the mean probability "
              "against the mean threshold, can flip). Use it with `neonet_predict --model-package` or install it "
              "with `neonet_install_model`.", "",
              "**The figures below are APPARENT performance**: the update was fitted on the same cases it is "
              "measured on, so they are optimistic. To measure the updated model honestly, validate it with "
              "`neonet_validate -m <new model> -i <another cohort>` on cases not used for the update (a later "
              "cohort from the same site), or report the update's performance by bootstrap optimism correction.", "",
              f"- apparent calibration-in-the-large {_fmt(rc['apparent']['citl'].get('intercept'))}, apparent slope "
              f"{_fmt(rc['apparent']['slope'].get('slope'))}, apparent O/E {_fmt(rc['apparent']['o_e_ratio'])}, "
              f"apparent Brier {_fmt(rc['apparent']['brier'])}"]
    return "\n".join(L) + "\n"
