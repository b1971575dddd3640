"""Readers for the real MovieLens formats, and every kind of bad input the foundation issue lists."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.ingestion import (
    PARSE_ERROR,
    SOURCE_LINE,
    DataFormatError,
    load_movielens,
    read_items_file,
    read_movielens,
    read_ratings_file,
)
from recsys_core.schema import IdIndex
from recsys_core.validation import validate_ratings

ML100K_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_ml100k_ratings_and_items(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    write(tmp_path / "u.item", ML100K_ITEM.encode("latin-1") + "2|Café Society (1995)|01-Jan-1995||u|0|0|0|0|0|1|0|0|1|0|0|0|0|0|0|0|0|0|0\n".encode("latin-1"))
    ratings, items = load_movielens(tmp_path, "ml-100k")
    assert ratings.to_dict("list") == {"user_id": [196, 186], "item_id": [242, 302], "rating": [3.0, 3.0], "timestamp": [881250949, 891717742]}
    assert items.loc[0, "title"] == "Toy Story" and items.loc[0, "year"] == 1995
    assert items.loc[0, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[1, "title"] == "Café Society"  # latin-1 decoded, non-ASCII kept
    assert items.loc[1, "genres"] == "Comedy|Drama"


def test_ml1m_double_colon_format(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    write(tmp_path / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Star Wars: Episode IV (1977)::Action|Sci-Fi\n")
    ratings, items = load_movielens(tmp_path, "ml-1m")
    assert ratings["item_id"].tolist() == [1193, 661]
    assert items.set_index("item_id").loc[661, "title"] == "Star Wars: Episode IV"


def test_ml_latest_csv_with_quotes_and_half_stars(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n')
    ratings, items = load_movielens(tmp_path, "ml-latest-small")
    assert ratings.loc[0, "rating"] == 4.5
    assert items.loc[0, "title"] == "American President, The" and items.loc[0, "year"] == 1995


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"u\.data: file is empty"):
        read_ratings_file(write(tmp_path / "u.data", ""), "ml-100k")


def test_missing_column_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "user_id,item_id,timestamp\n1,2,3\n")
    with pytest.raises(DataFormatError) as err:
        read_ratings_file(path, "canonical")
    assert err.value.field == "rating" and err.value.line == 1 and "ratings.csv" in str(err.value)


def test_wrong_separator_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "1,2,3,881250949\n")
    with pytest.raises(DataFormatError, match=r"line 1: expected '\\t'-separated fields but the line is ','-separated"):
        read_ratings_file(path, "ml-100k")


def test_wrong_text_encoding_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", b"user_id,item_id,rating,timestamp\n1,2,3,881250949\n1,\xff\xfe,3,881250949\n")
    with pytest.raises(DataFormatError, match=r"line 3: not valid utf-8"):
        read_ratings_file(path, "canonical")


def test_bad_rows_are_kept_with_reasons_not_dropped(tmp_path: Path) -> None:
    text = (
        "1\t10\t5\t881250949\n"  # fine
        "2\t10\tabc\t881250950\n"  # non-numeric rating
        "3\t10\t9\t881250951\n"  # out of range
        "\t10\t3\t881250952\n"  # NaN key
        "1\t10\t5\t881250949\n"  # duplicate of line 1
        "4\t99\t4\t881250953\n"  # unknown item
        "5\t10\t4\t12\n"  # implausible timestamp
        "6\t10"  # truncated last line
    )
    raw = read_ratings_file(write(tmp_path / "u.data", text), "ml-100k")
    assert raw[SOURCE_LINE].tolist() == list(range(1, 9))
    assert raw.loc[1, PARSE_ERROR] == "rating: not a number: 'abc'"
    assert "wrong number of fields" in raw.loc[7, PARSE_ERROR]
    outcome = validate_ratings(raw, known_item_ids=np.array([10]), now=1_700_000_000)
    assert len(outcome.valid) + len(outcome.rejected) == len(raw) == 8
    assert len(outcome.valid) == 1
    reasons = outcome.rejected.set_index(SOURCE_LINE)["reason"]
    assert reasons[2].startswith("unreadable: rating: not a number")
    assert reasons[3] == "rating not in [1.0, 2.0, 3.0, 4.0, 5.0]"
    assert "missing user_id" in reasons[4]
    assert reasons[5] == "duplicate (user_id, item_id, timestamp)"
    assert reasons[6] == "unknown item_id"
    assert reasons[7] == "implausible timestamp"
    assert "truncated" in reasons[8]


def test_malformed_item_line_is_quarantined_not_fatal(tmp_path: Path) -> None:
    items = read_items_file(write(tmp_path / "u.item", (ML100K_ITEM + "2|Broken (1995)|01-Jan-1995\n").encode("latin-1")), "ml-100k")
    assert len(items) == 2
    assert pd.isna(items.loc[1, "item_id"]) and "expected 24 fields, found 3" in items.loc[1, PARSE_ERROR]


def test_missing_release_file_is_named(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t1\t1\t881250949\n")
    with pytest.raises(DataFormatError, match=r"u\.item: missing"):
        read_movielens(tmp_path, "ml-100k")


def test_parquet_canonical_file(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": [1], "item_id": [2], "rating": [4.0], "timestamp": [881250949]})
    frame.to_parquet(tmp_path / "r.parquet")
    raw = read_ratings_file(tmp_path / "r.parquet")
    assert raw[PARSE_ERROR].isna().all() and raw.loc[0, "rating"] == 4.0


def test_id_index_round_trip_and_unknowns() -> None:
    index = IdIndex.from_ids(pd.Series([30, 10, 20, 10]))
    assert index.encode(np.array([10, 30])).tolist() == [0, 2]
    assert index.decode(np.array([1])).tolist() == [20]
    assert index.encode(np.array([5, 20, 99]), missing=-1).tolist() == [-1, 1, -1]
    with pytest.raises(KeyError, match="2 ids not in the index"):
        index.encode(np.array([5, 99]))


@pytest.mark.movielens
def test_real_movielens_100k(movielens_100k: Path) -> None:
    ratings, items = load_movielens(movielens_100k, "ml-100k")
    assert (len(ratings), ratings["user_id"].nunique(), len(items)) == (100_000, 943, 1682)
    assert items.set_index("item_id").loc[1, "title"] == "Toy Story"
