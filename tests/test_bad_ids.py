"""Issue 16's reproductions on the read path: ids are exact integers in [0, 2^63) or rejected with file, line and
field; a duplicated header column, a UTF-8 BOM and a quoted newline are handled; nothing is lost or altered."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_core.ingestion import PARSE_ERROR, SOURCE_LINE, DataFormatError, ParquetRatingChunks, read_items_file, read_ratings_file
from recsys_core.sources import raw_from_canonical
from recsys_core.validation import REASON, SOURCE_FILE, combine_rating_sources, validate_items, validate_ratings, write_validated_ratings

NOW = 1_700_000_000
HEADER = "user_id,item_id,rating,timestamp\n"
BIG_IDS = ["99999999999999999999", "18446744073709551615", "9223372036854775807", "9223372036854775808"]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_csv_ids_above_int64_are_rejected_not_merged(tmp_path: Path) -> None:
    lines = [f"{user},10,4,881250949" for user in BIG_IDS] + ["9007199254740993,10,4,881250949", "7,10,4,881250949"]
    raw = read_ratings_file(write(tmp_path / "ratings.csv", HEADER + "\n".join(lines) + "\n"), "canonical")
    assert raw[SOURCE_LINE].tolist() == [2, 3, 4, 5, 6, 7]
    errors = raw[PARSE_ERROR].tolist()
    assert errors[2] is pd.NA and raw.loc[2, "user_id"] == 2**63 - 1  # the largest int64 is a valid id
    for line in (0, 1, 3):
        assert errors[line] == f"user_id: not an integer in [0, 2^63): {BIG_IDS[line]!r}"
    assert raw.loc[4, "user_id"] == 9007199254740993  # exact, not rounded through float
    assert raw.loc[5, "user_id"] == 7
    outcome = validate_ratings(raw, known_item_ids=np.array([10]), now=NOW)
    assert sorted(outcome.valid["user_id"].tolist()) == [7, 9007199254740993, 2**63 - 1]
    assert outcome.rejected[SOURCE_LINE].tolist() == [2, 3, 5]


@pytest.mark.parametrize("text", ["2.5", "3.0", "1e3", "abc", "0x10", "true"])
def test_csv_ids_that_are_not_integers_are_rejected(tmp_path: Path, text: str) -> None:
    raw = read_ratings_file(write(tmp_path / "ratings.csv", HEADER + f"1,{text},4,881250949\n"), "canonical")
    assert raw.loc[0, PARSE_ERROR] == f"item_id: not an integer in [0, 2^63): {text!r}"


def test_negative_ids_are_rejected_by_validation_naming_the_field(tmp_path: Path) -> None:
    raw = read_ratings_file(write(tmp_path / "ratings.csv", HEADER + "-3,10,4,881250949\n4,-10,4,881250949\n5,10,4,881250949\n"))
    outcome = validate_ratings(raw, known_item_ids=np.array([-10, 10]), now=NOW)
    assert outcome.valid["user_id"].tolist() == [5]
    reasons = dict(zip(outcome.rejected[SOURCE_LINE], outcome.rejected[REASON]))
    assert reasons == {2: "user_id not an integer in [0, 2^63)", 3: "item_id not an integer in [0, 2^63)"}


def test_in_memory_sources_obey_the_id_rule() -> None:
    frame = pd.DataFrame({"user_id": [-1, 1], "item_id": [10, 10], "rating": [4.0, 4.0], "timestamp": [881250949, 881250950]})
    outcome = validate_ratings(raw_from_canonical(frame, list(frame.columns)), known_item_ids=np.array([10]), now=NOW)
    assert outcome.valid["user_id"].tolist() == [1] and outcome.rejected[REASON].tolist() == ["user_id not an integer in [0, 2^63)"]


def parquet(path: Path, **columns: pa.Array) -> Path:
    base = {"user_id": pa.array([1, 2], pa.int64()), "item_id": pa.array([10, 10], pa.int64()),
            "rating": pa.array([4.0, 3.0], pa.float32()), "timestamp": pa.array([881250949, 881250950], pa.int64())}  # fmt: skip
    pq.write_table(pa.table({**base, **columns}), path)
    return path


@pytest.mark.parametrize(
    ("column", "values", "bad"),
    [
        ("user_id", pa.array([2.5, 3.9], pa.float64()), ["2.5", "3.9"]),
        ("user_id", pa.array([2**63 + 5, 4], pa.uint64()), [str(2**63 + 5)]),
        ("item_id", pa.array([True, False], pa.bool_()), ["True", "False"]),
        ("user_id", pa.array([None, 3.0], pa.float64()), []),
        ("user_id", pa.array([None, 2**60 + 1], pa.int64()), []),
    ],
)
def test_parquet_ids_are_exact_or_rejected(tmp_path: Path, column: str, values: pa.Array, bad: list[str]) -> None:
    path = parquet(tmp_path / "r.parquet", **{column: values})
    for raw in (read_ratings_file(path), next(iter(ParquetRatingChunks(path)))):
        assert raw[SOURCE_LINE].tolist() == [1, 2]
        errors = [e for e in raw[PARSE_ERROR].tolist() if e is not pd.NA]
        assert errors == [f"{column}: not an integer in [0, 2^63): {b!r}" for b in bad]
        if not bad:  # a null stays missing, the other value exact
            assert raw[column].isna().tolist() == [True, False] and raw.loc[1, column] == values[1].as_py()


def test_parquet_file_to_file_keeps_every_row(tmp_path: Path) -> None:
    path = parquet(tmp_path / "r.parquet", user_id=pa.array([2**63 + 5, 4], pa.uint64()))
    report = write_validated_ratings(ParquetRatingChunks(path), np.array([10]), tmp_path / "valid.parquet",
                                     tmp_path / "rejected.parquet", now=NOW)  # fmt: skip
    assert (report.valid_rows, report.rejected_rows) == (1, 1)
    assert pd.read_parquet(tmp_path / "valid.parquet")["user_id"].tolist() == [4]


def test_items_ids_are_exact_or_rejected(tmp_path: Path) -> None:
    text = "item_id,title,genres\n1,A,Drama\n2.5,B,Drama\n18446744073709551615,C,Drama\n-4,D,Drama\n"
    raw = read_items_file(write(tmp_path / "items.csv", text))
    assert raw[PARSE_ERROR].tolist()[1:3] == ["item_id: not an integer in [0, 2^63): '2.5'",
                                              "item_id: not an integer in [0, 2^63): '18446744073709551615'"]  # fmt: skip
    outcome = validate_items(raw)
    assert outcome.valid["item_id"].tolist() == [1]
    assert "item_id not an integer in [0, 2^63)" in outcome.rejected.set_index(SOURCE_LINE).loc[5, REASON]


def test_duplicated_header_column_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "user_id,item_id,rating,timestamp,rating\n1,10,4,881250949,5\n")
    with pytest.raises(DataFormatError) as err:
        read_ratings_file(path)
    assert (err.value.line, err.value.field) == (1, "rating") and "ratings.csv" in str(err.value)
    assert "duplicated column" in str(err.value)


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    raw = read_ratings_file(write(tmp_path / "ratings.csv", b"\xef\xbb\xbf" + (HEADER + "1,10,4,881250949\n").encode()))
    assert raw[PARSE_ERROR].isna().all() and raw.loc[0, "user_id"] == 1
    items = read_items_file(write(tmp_path / "items.csv", b"\xef\xbb\xbf" + b"item_id,title,genres\n1,A,Drama\n"))
    assert items.loc[0, "item_id"] == 1 and items[PARSE_ERROR].isna().all()


def test_source_line_counts_newlines_inside_quoted_fields(tmp_path: Path) -> None:
    text = HEADER + '1,10,"4\n",881250949\n2,10,4,881250950\n3,10\n4,10,4,881250951\n'
    raw = read_ratings_file(write(tmp_path / "ratings.csv", text))
    assert raw[SOURCE_LINE].tolist() == [2, 4, 5, 6]
    assert raw["user_id"].tolist()[1:2] == [2] and "wrong number of fields" in raw.loc[2, PARSE_ERROR]
    assert raw.loc[3, "user_id"] == 4


def test_rejected_rows_name_their_file(tmp_path: Path) -> None:
    raw = read_ratings_file(write(tmp_path / "drop.csv", HEADER + "99999999999999999999,10,4,881250949\n"))
    outcome = validate_ratings(combine_rating_sources({"drop.csv": raw}), known_item_ids=np.array([10]), now=NOW)
    row = outcome.rejected.iloc[0]
    assert (row[SOURCE_FILE], row[SOURCE_LINE]) == ("drop.csv", 2) and "user_id" in row[REASON]
