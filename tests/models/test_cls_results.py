"""neonet_toolkit.models.cls_results: the predictions CSVs round-trip with typed label and probabilities."""
from __future__ import annotations

from neonet_toolkit.models.cls_results import read_predictions_csv, write_predictions_csv


def test_predictions_csv_round_trip(tmp_path):
    rows = [{"case_id": "c1", "label": 1, "probability": 0.25, "probability_raw": 0.5},
            {"case_id": "c2", "label": 0, "probability": 0.125, "probability_raw": 0.0625}]
    f = tmp_path / "oof_predictions.csv"
    write_predictions_csv(f, rows, ["case_id", "label", "probability", "probability_raw"])
    assert read_predictions_csv(f) == rows
