"""`recsys bench encoder` end to end on a tiny BERT and a small synthetic catalogue: every path runs and reports."""

from __future__ import annotations

import json
from pathlib import Path

from recsys_dagster.cli import main
from tests.test_text_features import write_tiny_bert


def test_bench_encoder_reports_every_path_and_the_incremental_cost(tmp_path: Path) -> None:
    model = write_tiny_bert(tmp_path / "tiny_bert")
    out = tmp_path / "encoder.json"
    argv = ["bench", "encoder", "--json", str(out), "--model", str(model), "--data-dir", str(tmp_path / "absent"),
            "--synthetic-items", "300", "--synthetic-subset", "200", "--naive-items", "20", "--repeats", "1"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = {row["path"]: row for row in report["rows"]}
    assert set(rows) == {"naive", "plain_batched", "torch", "onnx", "onnx-int8"}
    assert rows["naive"]["items"] == 20 and rows["torch"]["items"] == 200
    assert rows["onnx"]["cos_min"] > 0.999 and 0 <= rows["onnx-int8"]["top10_overlap"] <= 1
    assert all(row["items_per_s"] > 0 for row in rows.values())
    (incremental,) = report["incremental"]
    assert (incremental["items"], incremental["update_encoded"], incremental["update_reused"]) == (300, 3, 297)
    assert report["best_path"]["synthetic-300"]["path"] != "naive"
