"""Chunked validation: rows are judged against the whole input whatever the chunk size, file-to-file or in memory."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recsys_core.validation as validation
from recsys_core.ingestion import PARSE_ERROR, SOURCE_LINE, DataFormatError, ParquetRatingChunks, read_ratings_file
from recsys_core.schema import RATING_DTYPES
from recsys_core.sources import raw_from_canonical
from recsys_core.validation import REASON, validate_items, validate_ratings, write_validated_ratings
from recsys_dagster.cli import main

NOW = 1_700_000_000
DUPLICATE = "duplicate (user_id, item_id, timestamp)"


def ratings_with_problems() -> pd.DataFrame:
    """Twelve rows: a duplicate far from its first copy, an unknown item, a bad rating, a missing key."""
    rows = [
        (1, 10, 4.0, 881250949),
        (2, 10, 3.0, 881250950),
        (3, 11, 5.0, 881250951),
        (4, 99, 4.0, 881250952),  # unknown item
        (5, 10, 9.0, 881250953),  # rating out of range
        (6, 11, 2.0, 881250954),
        (7, 10, 1.0, 881250955),
        (1, 10, 4.0, 881250949),  # repeats line 1, several chunks later
        (8, None, 3.0, 881250956),  # missing item_id
        (9, 11, 4.0, 881250957),
        (3, 11, 5.0, 881250951),  # repeats line 3
        (1, 10, 4.0, 881250949),  # repeats line 1 again
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype(
        {"user_id": "Int64", "item_id": "Int64", "rating": "Float32", "timestamp": "Int64"}
    )
    return raw_from_canonical(frame, list(frame.columns))


def reasons_by_line(rejected: pd.DataFrame) -> dict[int, str]:
    return dict(zip(rejected[SOURCE_LINE].tolist(), rejected[REASON].tolist()))


EXPECTED_REJECTS = {
    4: "unknown item_id",
    5: "rating not in [1.0, 2.0, 3.0, 4.0, 5.0]",
    8: DUPLICATE,
    9: "missing item_id",
    11: DUPLICATE,
    12: DUPLICATE,
}


@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 1000])
def test_every_chunk_size_gives_the_same_split(chunk_rows: int) -> None:
    raw = ratings_with_problems()
    outcome = validate_ratings(raw, np.array([10, 11]), now=NOW, chunk_rows=chunk_rows)
    assert reasons_by_line(outcome.rejected) == EXPECTED_REJECTS
    assert len(outcome.valid) + len(outcome.rejected) == len(raw)
    assert outcome.valid.dtypes.astype(str).tolist() == ["int64", "int64", "float32", "int64"]
    report = outcome.report
    assert (report.valid_rows, report.rejected_rows, report.schema_ok) == (6, 6, True)
    per_reason = dict(zip(report.reason_counts()[REASON], report.reason_counts()["rows"]))
    assert per_reason == {DUPLICATE: 3, "unknown item_id": 1, "rating not in [1.0, 2.0, 3.0, 4.0, 5.0]": 1, "missing item_id": 1}
    assert report.ge_result["success"] is False
    assert report.ge_result["statistics"]["evaluated_expectations"] == len(report.expectations)


def test_a_hash_collision_never_rejects_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every key hashing alike, every row is a candidate: only real repeats may be flagged."""
    monkeypatch.setattr(validation, "_key_hashes", lambda values: np.zeros(len(values[0]), dtype=np.uint64))
    outcome = validate_ratings(ratings_with_problems(), np.array([10, 11]), now=NOW, chunk_rows=4)
    assert reasons_by_line(outcome.rejected) == EXPECTED_REJECTS


def test_file_to_file_matches_in_memory(tmp_path: Path) -> None:
    raw = ratings_with_problems()
    source = tmp_path / "ratings.parquet"
    raw[["user_id", "item_id", "rating", "timestamp"]].to_parquet(source, index=False, row_group_size=4)
    chunks = ParquetRatingChunks(source, chunk_rows=3)
    report = write_validated_ratings(chunks, np.array([10, 11]), tmp_path / "valid.parquet", tmp_path / "rejected.parquet", now=NOW)
    valid, rejected = pd.read_parquet(tmp_path / "valid.parquet"), pd.read_parquet(tmp_path / "rejected.parquet")
    in_memory = validate_ratings(raw, np.array([10, 11]), now=NOW)
    pd.testing.assert_frame_equal(valid, in_memory.valid)
    assert reasons_by_line(rejected) == EXPECTED_REJECTS
    assert (report.valid_rows, report.rejected_rows) == (len(valid), len(rejected))


def test_clean_file_still_writes_a_typed_empty_rejected_file(tmp_path: Path) -> None:
    source = tmp_path / "ratings.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": [10, 10], "rating": [4.0, 5.0], "timestamp": [881250949, 881250950]}).to_parquet(source)
    report = write_validated_ratings(ParquetRatingChunks(source), np.array([10]), tmp_path / "v.parquet", tmp_path / "r.parquet", now=NOW)
    assert report.rejected_rows == 0
    rejected = pd.read_parquet(tmp_path / "r.parquet")
    assert rejected.empty and {REASON, PARSE_ERROR, SOURCE_LINE} <= set(rejected.columns)


def test_empty_file_gives_empty_typed_outputs(tmp_path: Path) -> None:
    source = tmp_path / "ratings.parquet"
    pd.DataFrame({c: pd.Series(dtype=d) for c, d in RATING_DTYPES.items()}).to_parquet(source)
    report = write_validated_ratings(ParquetRatingChunks(source), np.array([10]), tmp_path / "v.parquet", tmp_path / "r.parquet", now=NOW)
    assert (report.valid_rows, report.rejected_rows, report.schema_ok) == (0, 0, True)
    assert pd.read_parquet(tmp_path / "v.parquet").dtypes.astype(str).to_dict() == RATING_DTYPES


def test_parquet_without_a_key_column_names_file_and_field(tmp_path: Path) -> None:
    source = tmp_path / "ratings.parquet"
    pd.DataFrame({"user_id": [1], "rating": [4.0], "timestamp": [881250949]}).to_parquet(source)
    with pytest.raises(DataFormatError, match=r"ratings\.parquet.*field 'item_id'"):
        ParquetRatingChunks(source)


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    source = tmp_path / "ratings.parquet"
    source.write_text("user_id,item_id,rating,timestamp\n1,10,4,881250949\n")
    with pytest.raises(DataFormatError, match=r"ratings\.parquet: not a readable Parquet file"):
        ParquetRatingChunks(source)
    with pytest.raises(DataFormatError, match=r"ratings\.parquet: not a readable Parquet file"):
        read_ratings_file(source)


def test_repeated_item_id_keeps_the_first_row() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 1], "title": ["A", "B", "A again"], "genres": ["Drama"] * 3,
                          "year": [1995, 1996, 1995], "text": ["", "", ""]})  # fmt: skip
    outcome = validate_items(raw_from_canonical(items, list(items.columns)))
    assert outcome.valid["title"].tolist() == ["A", "B"]
    assert outcome.rejected[REASON].tolist() == ["duplicate item_id"]


@pytest.mark.movielens
def test_bench_ingest_reads_real_movielens_and_a_synthetic_file(tmp_path: Path, movielens_100k: Path) -> None:
    out = tmp_path / "ingest.json"
    argv = ["bench", "ingest", "--data-dir", str(movielens_100k), "--format", "ml-100k", "--synthetic", "3000,6000",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = {row["dataset"]: row for row in report["rows"]}
    assert (rows["ml-100k"]["ratings"], rows["ml-100k"]["users"], rows["ml-100k"]["items"], rows["ml-100k"]["rejected"]) == (100_000, 943, 1682, 0)
    assert rows["synthetic-3000"]["rejected"] == 0 and rows["synthetic-6000"]["ratings"] > rows["synthetic-3000"]["ratings"]
    assert all(row["peak_mem_mb"] >= 0 and row["ratings_per_s"] > 0 for row in rows.values())
    assert set(report["scaling"]) == {"peak_mem_mb_per_extra_1M_rows", "parquet_mb_per_1M_rows", "marginal_mem_over_parquet", "ratings_per_s_marginal"}
