"""NeoCls evaluation output: ROC and reliability plots, Table 2 / Table 5, the Markdown report and the
methods summary, from the per-run results of :func:`neonet_toolkit.evaluation.cls_metrics.evaluate_run`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from neonet_toolkit.evaluation.cls_shortcut import SHORTCUT_WARN_AUC
from neonet_toolkit.experiment_planning.splits import load_splits, split_layout
from neonet_toolkit.models.cls_results import SUMMARY_FILE
from neonet_toolkit.networks.classifiers import PRETTY, TABLE2_ARCHS, TABLE5_ARCHS
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import (
    AUTO_RATIO,
    PLANS_NAME,
    PROTOCOL_LABELS,
    ResultLayout,
    is_auto_ratio,
    ratio_sort_key,
)
from neonet_toolkit.utilities.io import load_json, save_csv, save_figure, save_text


# ----------------------------------------------------------------------------- plots
def _savefig(fig, path: Path) -> None:
    save_figure(fig, path)


def plot_roc(results: list[dict], path: Path, title: str = "ROC (pooled out-of-fold)") -> None:
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for r in results:
        if "pooled_delong" not in r:
            continue
        fpr, tpr, _ = stats.roc_curve_points(r["_y"], r["_p"])
        d = r["pooled_delong"]
        ax.step(fpr, tpr, where="post",
                label=f"{r['run']}: {d['auc']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)


def plot_calibration(r: dict, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for key, lab in (("reliability", "recalibrated"), ("reliability_raw", "raw")):
        rc = r["calibration"][key]
        mp, ob = np.array(rc["mean_predicted"], float), np.array(rc["observed"], float)
        ok = np.array(rc["count"]) > 0
        ece = r["calibration"]["ece" if key == "reliability" else "ece_raw"]
        ax.plot(mp[ok], ob[ok], marker="o", label=f"{lab} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability: {r['run']}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)


# ----------------------------------------------------------------------------- tables
def _fmt(x, nd=3) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def cell(r: dict | None) -> str:
    if r is None:
        return "—"
    s = f"{_fmt(r['fold_auc_mean'])} ± {_fmt(r['fold_auc_sd'])}"
    if "pooled_delong" in r:
        d = r["pooled_delong"]
        s += f" (pooled {_fmt(d['auc'])} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}])"
    if not r["complete"]:
        s += f" *{len(r['folds_done'])}/{r['n_folds_expected']} folds*"
    return s


def write_csv(path: Path, rows: list[dict]) -> None:
    if rows:
        save_csv(rows, path)


def tables(results: dict[str, dict], crop_source: str, early_stopping: str,
           table5_ratio: float | None = None) -> dict:
    """Table 2 (architectures x ratios) and Table 5 (PattenNet ablations) of one (crop source, protocol)."""
    # radiomics has no model selection: it belongs in every table of its crop source
    sel = {n: r for n, r in results.items() if r.get("crop_source") == crop_source
           and (r.get("early_stopping") == early_stopping or r.get("arch") == "radiomics")}
    ratios = sorted({r["ratio"] for r in sel.values()}, key=ratio_sort_key)
    archs = sorted({r["arch"] for r in sel.values() if r["arch"] in TABLE2_ARCHS or not r["arch"].startswith("pattennet")},
                   key=lambda a: (list(TABLE2_ARCHS).index(a) if a in TABLE2_ARCHS else 100, a))
    arm_order = {"synthetic": 0, "both": 1, "oversample": 2, "weighted": 3}
    cols = sorted({(r["ratio"], r.get("arm", "synthetic")) for r in sel.values()},
                  key=lambda c: (ratio_sort_key(c[0]), arm_order.get(c[1], 9)))
    get = {(r["arch"], r["ratio"], r.get("arm", "synthetic")): r for r in sel.values()}
    head = [column_label(x, arm) for x, arm in cols]
    md = ["| Model (3D) | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    csv_rows = []
    for a in archs:
        md.append(f"| {PRETTY.get(a, a)} | " + " | ".join(cell(get.get((a, *c))) for c in cols) + " |")
        for c in cols:
            r = get.get((a, *c))
            if r is not None:
                csv_rows.append(_row(r))
    means = []
    for c in cols:
        v = [get[(a, *c)]["fold_auc_mean"] for a in archs if (a, *c) in get and get[(a, *c)]["complete"]]
        means.append(_fmt(float(np.mean(v))) if v else "—")
    if archs:
        md.append("| Mean AUC (complete runs) | " + " | ".join(means) + " |")
    fixed = [x for x in ratios if not is_auto_ratio(x)]
    t5_ratio = table5_ratio if table5_ratio is not None else (max(fixed) if fixed else 1.0)
    md5 = [f"| Configuration (ratio {t5_ratio:g}) | AUC |", "|---|---|"]
    rows5 = []
    for a in TABLE5_ARCHS:
        r = get.get((a, t5_ratio, "synthetic"))
        if r is not None:
            md5.append(f"| {PRETTY.get(a, a)} | {cell(r)} |")
            rows5.append(_row(r))
    es_note = {"val": "PAPER PROTOCOL (OPTIMISTIC): early stopping on the reported validation fold; the selected "
                      "epoch has seen the validation labels, so these AUCs are optimistic.",
               "nested": "Nested CV: epoch selection, calibration and threshold fitted on inner stratified folds of "
                         "each training fold, then a refit on the whole training fold; the reported folds are never "
                         "used for any choice.",
               "inner": "Early stopping on one inner split of each training fold (validation folds untouched).",
               "none": "No model selection (fixed epochs, last epoch)."}[early_stopping]
    return {"table2_md": "\n".join(md), "table2_rows": csv_rows, "table5_md": "\n".join(md5) if rows5 else "",
            "table5_rows": rows5, "note": es_note, "ratios": ratios, "archs": archs}


def column_label(ratio: float | str, arm: str = "synthetic") -> str:
    if is_auto_ratio(ratio):
        return {"synthetic": "R+S (auto ratio)", "both": "R+S both classes (auto ratio)",
                "oversample": "R oversampled (auto ratio)", "weighted": "R class-weighted (auto ratio)"}.get(
            arm, f"{arm} (auto ratio)")
    if ratio == 0:
        return "R (imbalanced)"
    pct = f"{ratio * 100:g}%{' balanced' if ratio == 1 else ''}"
    return {"synthetic": f"R+S ({pct})", "both": f"R+S both classes ({pct})",
            "oversample": f"R oversampled ({pct})", "weighted": f"R class-weighted ({pct})"}.get(arm, f"{arm} ({pct})")


def _row(r: dict) -> dict:
    d, b, op = r.get("pooled_delong", {}), r.get("pooled_bootstrap", {}), r["operating_point"]
    return {"run": r["run"], "arch": r["arch"], "ratio": r["ratio"], "arm": r.get("arm", "synthetic"),
            "crop_source": r["crop_source"], "early_stopping": r["early_stopping"],
            "protocol": PROTOCOL_LABELS.get(r["early_stopping"], r["early_stopping"]), "folds": len(r["folds_done"]), "complete": r["complete"],
            "fold_auc_mean": r["fold_auc_mean"], "fold_auc_sd": r["fold_auc_sd"],
            **{f"fold{f['fold']}_auc": f["auc"] for f in r["fold_results"]},
            "pooled_auc": d.get("auc"), "delong_low": d.get("ci_low"), "delong_high": d.get("ci_high"),
            "bootstrap_low": b.get("ci_low"), "bootstrap_high": b.get("ci_high"),
            "sensitivity": op["sensitivity"], "specificity": op["specificity"],
            "ece": r["calibration"]["ece"], "ece_raw": r["calibration"]["ece_raw"], "n": r["n"], "n_pos": r["n_pos"]}


# ----------------------------------------------------------------------------- report
def write_tables(results: dict[str, dict], out: Path, table5_ratio: float | None = None) -> tuple[dict, list[str]]:
    """Table 2 / Table 5 (Markdown + CSV) and the pooled ROC of every (crop source, protocol) group; returns the
    tables and their report section."""
    groups = sorted({(r["crop_source"], r["early_stopping"]) for r in results.values() if r["arch"] != "radiomics"}
                    or {(r["crop_source"], r["early_stopping"]) for r in results.values()})
    all_tables, report = {}, []
    for cs, es in groups:
        t = tables(results, cs, es, table5_ratio)
        all_tables[f"{cs}_{es}"] = t
        sfx = "" if (cs, es) == ("gt", "val") else f"_{cs}_es{es}"  # file names of the paper protocol's tables
        save_text(t["table2_md"] + "\n\n" + t["note"] + "\n", out / f"table2{sfx}.md")
        write_csv(out / f"table2{sfx}.csv", t["table2_rows"])
        if t["table5_md"]:
            save_text(t["table5_md"] + "\n\n" + t["note"] + "\n", out / f"table5{sfx}.md")
            write_csv(out / f"table5{sfx}.csv", t["table5_rows"])
        report += [f"## Table 2 shape (crop source {cs}; model selection: {PROTOCOL_LABELS.get(es, es)})", "",
                   t["table2_md"], "",
                   f"_{t['note']}_", ""]
        if t["table5_md"]:
            report += ["## Table 5 shape (PattenNet ablations)", "", t["table5_md"], ""]
        plot_roc([r for r in results.values() if r["crop_source"] == cs
                  and (r["early_stopping"] == es or r["arch"] == "radiomics")],
                 out / f"roc_all{sfx}.png", f"ROC, crop {cs}, early stopping {es}")
    return all_tables, report


def report_markdown(name: str, n_folds: int, n_repeats: int, results: dict[str, dict], table_section: list[str],
                    tests: list[dict], shortcuts: list[dict], clf_checks: list[dict]) -> str:
    """``report.md``: tables, repeats, operating points, paired tests and the two shortcut checks."""
    report = [f"# NeoCls evaluation: {name}", "",
              f"Real validation cases only; {n_folds} folds. Cell: mean ± SD of per-fold AUC (as in the paper) "
              "(pooled out-of-fold AUC [DeLong 95 % CI]).", ""]
    report += table_section
    report += auto_ratio_section(name, results)
    report += _repeats_section(results, n_folds, n_repeats)
    report += _operating_point_section(results)
    report += _paired_tests_section(tests)
    report += _shortcut_section(shortcuts, clf_checks)
    return "\n".join(report) + "\n"


def auto_ratio_choices(dataset: str, results: dict[str, dict], plans_name: str = PLANS_NAME) -> dict[str, list[dict]]:
    """Per ``--synthetic-ratio auto`` run, per fold: the chosen ratio, each candidate's pooled inner-OOF AUC and
    the quality-gate verdict, read from the folds' ``cls_summary.json``."""
    layout = None
    out: dict[str, list[dict]] = {}
    for rn, r in sorted(results.items()):
        if not is_auto_ratio(r.get("ratio")):
            continue
        layout = layout or ResultLayout.for_dataset(dataset, plans_name)
        rows = []
        for f in r["fold_results"]:
            path = layout.fold_folder(rn, f["fold"]) / SUMMARY_FILE
            if not path.is_file():
                continue
            s = load_json(path)
            rows.append({"fold": f["fold"], "chosen": s.get("synthetic_ratio_choice"),
                         "candidates": s.get("synthetic_ratio_candidates") or [], "gate": s.get("synthetic_gate"),
                         "val_auc": f["auc"]})
        out[rn] = rows
    return out


def _gate_text(gate: dict | None) -> str:
    if not gate:
        return "not gated (no synthetic patches)"
    if gate.get("passed"):
        return "passed"
    why = "; ".join(gate.get("reasons") or [])
    return f"**overridden** (failed: {why})" if gate.get("overridden") else f"failed: {why} → ratio 0 only"


def auto_ratio_section(dataset: str, results: dict[str, dict], plans_name: str = PLANS_NAME) -> list[str]:
    """``report.md``: for ``auto`` runs, each fold's chosen ratio, the candidates' inner AUCs and the gate."""
    choices = auto_ratio_choices(dataset, results, plans_name)
    if not choices:
        return []
    report = ["## Synthetic ratio chosen on the inner folds (--synthetic-ratio auto)", "",
              "| run | fold | chosen ratio | inner-OOF AUC per candidate ratio | quality gate | validation AUC |",
              "|---|---|---|---|---|---|"]
    for rn, rows in choices.items():
        for row in rows:
            cands = ", ".join(f"{c['ratio']:g}: {_fmt(c.get('inner_auc'))}" for c in row["candidates"]) or "—"
            chosen = "—" if row["chosen"] is None else f"{float(row['chosen']):g}"
            report.append(f"| {rn} | {row['fold']} | {chosen} | {cands} | {_gate_text(row['gate'])} | "
                          f"{_fmt(row['val_auc'])} |")
    report += ["", "_Each training fold chose its ratio (0 = no synthetic data) by the pooled inner-OOF AUC of the "
               "nested protocol, ties to the smaller ratio; the reported fold never saw the choice. Known "
               "limitation: the fold's generator was trained on all its training cases, inner-validation cases "
               "included (bounded by the copy-rate gate)._", ""]
    return report


def _repeats_section(results: dict[str, dict], n_folds: int, n_repeats: int) -> list[str]:
    rep_rows = [(rn, r["repeats"]) for rn, r in sorted(results.items()) if r.get("repeats")]
    if not rep_rows:
        return []
    report = [f"## Repeated stratified cross-validation ({n_repeats} repeat(s) of {n_folds} folds in "
              "splits_final.json)", "",
              "| run | complete repeats | pooled AUC per repeat: mean ± SD (min–max) | per-fold mean AUC: "
              "mean ± SD over repeats | repeat 0: fold mean (pooled [DeLong 95% CI]) |", "|---|---|---|---|---|"]
    for rn, rp in rep_rows:
        report.append(f"| {rn} | {len(rp['complete_repeats'])} | {_fmt(rp['pooled_auc_mean'])} ± "
                      f"{_fmt(rp['pooled_auc_sd'])} ({_fmt(rp['pooled_auc_min'])}–{_fmt(rp['pooled_auc_max'])}) | "
                      f"{_fmt(rp['fold_mean_mean'])} ± {_fmt(rp['fold_mean_sd'])} | {cell(results[rn])} |")
    report += ["", "_Each repeat is a new stratified partition of the same cases (split seed + r); a case is "
               "pooled only within its repeat. The spread over repeats is the split-to-split variability that a "
               "single 5-fold run hides._", ""]
    return report


def _operating_point_section(results: dict[str, dict]) -> list[str]:
    report = ["## Operating point and calibration", "",
              "| run | sensitivity [95% CI] | specificity [95% CI] | threshold from | ECE (raw → recalibrated) | "
              "bootstrap 95% CI |", "|---|---|---|---|---|---|"]
    for rn, r in sorted(results.items()):
        op, c, b = r["operating_point"], r["calibration"], r.get("pooled_bootstrap", {})
        report.append(f"| {rn} | {_fmt(op['sensitivity'], 2)} [{_fmt(op['sensitivity_ci'][0], 2)}, "
                      f"{_fmt(op['sensitivity_ci'][1], 2)}] | {_fmt(op['specificity'], 2)} "
                      f"[{_fmt(op['specificity_ci'][0], 2)}, {_fmt(op['specificity_ci'][1], 2)}] | "
                      f"{op['threshold_source']} | {_fmt(c['ece_raw'])} → {_fmt(c['ece'])} | "
                      f"[{_fmt(b.get('ci_low'))}, {_fmt(b.get('ci_high'))}] |")
    return report


def _paired_tests_section(tests: list[dict]) -> list[str]:
    if not tests:
        return []
    report = ["", f"## Paired DeLong tests (same validation cases, pooled out-of-fold; Holm-corrected over the "
              f"{len(tests)} tests of this report)", "",
              "| A | B | AUC A | AUC B | diff | z | p | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    report += [f"| {t['run_a']} | {t['run_b']} | {_fmt(t['auc_a'])} | {_fmt(t['auc_b'])} | {_fmt(t['diff'])} | "
               f"{_fmt(t['z'], 2)} | {_fmt(t['p_value'], 4)} | {_fmt(t['p_holm'], 4)} |" for t in tests]
    return report


def _shortcut_section(shortcuts: list[dict], clf_checks: list[dict]) -> list[str]:
    report = ["", "## Shortcut check (real vs synthetic discriminator on each fold's training set)", ""]
    if shortcuts:
        report += ["| fold | ratio | crop | AUC all [95% CI] | AUC minority-class only | warning |",
                   "|---|---|---|---|---|---|"]
        for s in shortcuts:
            a, m = s.get("all") or {}, s.get("minority_only") or {}
            report.append(f"| {s['fold']} | {s['ratio']:g} | {s['crop_source']} | {_fmt(a.get('auc'))} "
                          f"[{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}] | {_fmt(m.get('auc'))} | "
                          f"{'**synthetic is detectable**' if s['warning'] else 'ok'} |")
        report += ["", f"AUC ≥ {SHORTCUT_WARN_AUC}: synthetic patches are easy to tell from real ones; as they are "
                   "(almost) all of the minority class, R+S gains may come from learning 'synthetic', not the target."]
    else:
        report.append("No shortcut check found (runs without synthetic data, or not computed: `neonet_experiment` "
                      "computes it for every fold with a synthetic set).")
    if clf_checks:
        report += ["", "## Shortcut check by the classifier itself (held-out synthetic vs real validation patches "
                   "of the same class)", "",
                   "| run | fold | class | n synthetic | n real | AUC (0.5 = no shortcut) | mean p synthetic / real |",
                   "|---|---|---|---|---|---|---|"]
        for chk in clf_checks:
            for c, r in sorted(chk["per_class"].items()):
                if r["auc"] is not None:
                    report.append(f"| {chk['run']} | {chk['fold']} | {c} | {r['n_synthetic']} | {r['n_real']} | "
                                  f"{_fmt(r['auc'])} | {_fmt(r['mean_probability_synthetic'])} / "
                                  f"{_fmt(r['mean_probability_real'])} |")
    return report


def methods_summary(name: str, pp: Path, results: dict, tests: list[dict], shortcuts: list[dict],
                    n_boot: int) -> str:
    """A short TRIPOD+AI-style methods paragraph built from what the runs actually recorded."""
    k_rep, n_rep = split_layout(pp)
    splits = load_splits(pp)[:k_rep]
    first = next(iter(results.values()))
    labels = {c: int(y) for r in results.values() for c, y in zip(r["case_ids"], r["_y"])}
    rep_txt = "" if n_rep == 1 else (f", repeated {n_rep} times with new split seeds (repeat 0's folds give the "
                                     "main numbers; the spread over repeats is reported separately)")
    lines = [f"# Methods summary ({name})", "",
             "**Data and folds.** Stratified (by target) patient-level cross-validation with "
             f"{len(splits)} folds (nnU-Net splits_final.json){rep_txt}. Per fold of repeat 0 (training / validation "
             "cases, positives):"]
    for k, sp in enumerate(splits):
        tr_pos = sum(labels.get(c, 0) for c in sp["train"])
        va_pos = sum(labels.get(c, 0) for c in sp["val"])
        lines.append(f"- fold {k}: {len(sp['train'])} training ({tr_pos} positive) / {len(sp['val'])} validation "
                     f"({va_pos} positive)")
    protos = sorted({r["early_stopping"] for r in results.values() if r["arch"] != "radiomics"})
    arms = sorted({(r["ratio"], r.get("arm", "synthetic")) for r in results.values()
                   if is_auto_ratio(r["ratio"]) or r["ratio"] > 0}, key=lambda c: (ratio_sort_key(c[0]), c[1]))
    summ = [fr for r in results.values() for fr in r["fold_results"]]
    lines += ["", "**Model selection.** " + " ".join(f"{p}: {PROTOCOL_LABELS.get(p, p)}." for p in protos)]
    if any(is_auto_ratio(r["ratio"]) for r in results.values()):
        lines.append(f"With synthetic ratio '{AUTO_RATIO}', each training fold chose its ratio among the candidates by "
                     "the pooled inner-OOF AUC of its nested inner folds (ties to the smaller ratio), only if its "
                     "synthetic set passed the quality gate (realism C2ST and copy rate), else ratio 0.")
    if "nested" in protos:
        lines.append("Under the nested protocol each training fold is split into stratified inner folds; the epoch "
                     "is chosen on the pooled inner out-of-fold AUC (centred moving average, ties by lower BCE), "
                     "then the model is refitted on the whole training fold for that many epochs.")
    cal = sorted({str(r.get("calibration_method", "")) for r in results.values()} - {""})
    lines += ["", "**Probabilities, calibration and threshold.** Probabilities are mapped to the real training "
              "prevalence (prior-shift correction, because synthetic balancing changes the prior); under the "
              "nested protocol a Platt (or, with enough cases, isotonic) calibration and the operating threshold "
              "are then fitted on the inner out-of-fold predictions of the training fold only"
              + (f" (methods used: {', '.join(cal)})" if cal else "") + ". Threshold sources: "
              + ", ".join(sorted({str(r['operating_point']['threshold_source']) for r in results.values()})) + "."]
    if arms:
        lines += ["", "**Training-set arms.** At each synthetic ratio r the arms draw the same number of items per "
                  "epoch (hence equal optimizer steps): " + "; ".join(column_label(x, a) for x, a in arms) + "."]
    lines += ["", f"**Statistics.** Per-fold AUC mean ± SD (the paper's number) and the pooled out-of-fold AUC with "
              f"DeLong and stratified-bootstrap ({n_boot} replicates) 95 % CIs; sensitivity and specificity at the "
              "training-fitted threshold with Wilson CIs; calibration as ECE and reliability diagrams on the real "
              f"validation cases. {len(tests)} paired DeLong test(s) on the same cases, Holm-corrected."]
    if shortcuts:
        flagged = sum(bool(s["warning"]) for s in shortcuts)
        lines.append(f"A real-vs-synthetic discriminator was fitted per fold ({flagged}/{len(shortcuts)} folds "
                     "flagged: synthetic patches distinguishable).")
    lines += ["", f"Validation cases evaluated: {first['n']} ({first['n_pos']} positive); "
              f"{len(summ)} fold results over {len(results)} run(s)."]
    return "\n".join(lines) + "\n"
