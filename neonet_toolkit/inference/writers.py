"""neonet_predict's tables: ``predictions.csv`` and ``predictions.json`` rebuilt from the per-case records."""
from __future__ import annotations

from pathlib import Path

from neonet_toolkit.utilities.io import load_json, save_csv, save_json

CSV_FIELDS = ["case_id", "status", "error", "probability", "decision", "threshold", "fold_probabilities",
              "tumor_volume_ml",
              "qc_flags"]


def collect(out: str | Path, provenance: dict | None = None) -> list[dict]:
    """(Re)write predictions.csv / predictions.json from every case record in ``out/cases``."""
    out = Path(out)
    recs = [load_json(f) for f in sorted((out / "cases").glob("*.json"))] if (out / "cases").is_dir() else []
    rows = []
    for r in recs:
        failed = r.get("status") in ("failed", "pending")  # pending: a run stopped inside this case
        rows.append({
            "case_id": r["case_id"], "status": r.get("status", "ok"), "error": r.get("error", ""),
            "probability": "" if r.get("probability") is None else f"{r['probability']:.6f}",
            "decision": "" if r.get("decision") is None else r["decision"],
            "threshold": "" if r.get("threshold") is None else f"{r['threshold']:.6f}",
            "fold_probabilities": ";".join(f"{k}:{v:.6f}" for k, v in r.get("fold_probabilities", {}).items()),
            "tumor_volume_ml": "" if failed else f"{r['tumor_volume_ml']:.3f}",
            "qc_flags": ";".join(r.get("qc_flags", [])),
        })
    save_csv(rows, out / "predictions.csv", CSV_FIELDS)
    prov_file = out / "predictions.json"
    if provenance is None and prov_file.is_file():
        provenance = load_json(prov_file).get("provenance", {})
    save_json({"provenance": provenance or {}, "cases": recs}, prov_file)
    return recs
