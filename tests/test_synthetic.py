"""The embedded default dataset: deterministic, MovieLens-shaped, text that carries the ratings' signal."""

from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.sources import DataSourceSpec
from recsys_core.synthetic import SyntheticConfig, generate_synthetic, write_synthetic
from recsys_core.validation import validate_items, validate_ratings


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, items = generate_synthetic(n_users=50, n_items=80, n_ratings=1_000, seed=7)
    second, _ = generate_synthetic(n_users=50, n_items=80, n_ratings=1_000, seed=7)
    other, _ = generate_synthetic(n_users=50, n_items=80, n_ratings=1_000, seed=8)
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(other)
    assert set(first.columns) == {"user_id", "item_id", "rating", "timestamp"}
    assert len(items) == 80 and items["text"].str.len().gt(20).all()


def test_default_is_movielens_100k_shaped_and_valid() -> None:
    ratings, items = generate_synthetic()
    assert 99_000 <= len(ratings) <= 100_000
    assert ratings["user_id"].nunique() == 943 and len(items) == 1682
    assert set(ratings["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert not ratings.duplicated(["user_id", "item_id"]).any()
    popularity = ratings["item_id"].value_counts()
    assert popularity.iloc[: len(popularity) // 10].sum() > 0.3 * len(ratings)  # long tail: top 10% of items > 30%
    per_user = ratings.groupby("user_id").size()
    assert per_user.min() >= 5 and per_user.max() > 10 * per_user.median() / 2
    outcome = validate_ratings(ratings.assign(source_line=np.arange(len(ratings)), parse_error=pd.Series(pd.NA, dtype="string", index=ratings.index)),
                               items["item_id"].to_numpy())  # fmt: skip
    assert outcome.rejected.empty


def test_genre_taste_drives_ratings() -> None:
    """Users rate items of the genres they rate often higher: the signal text features can pick up."""
    ratings, items = generate_synthetic(n_users=300, n_items=400, n_ratings=20_000, seed=3)
    main_genre = items.set_index("item_id")["genres"].str.split("|").str[0]
    frame = ratings.assign(genre=ratings["item_id"].map(main_genre))
    share = frame.groupby(["user_id", "genre"]).size() / frame.groupby("user_id").size()
    mean_rating = frame.groupby(["user_id", "genre"])["rating"].mean()
    assert np.corrcoef(share.to_numpy(), mean_rating.to_numpy())[0, 1] > 0.2


def test_later_timestamps_see_newer_items() -> None:
    ratings, items = generate_synthetic(seed=5)
    years = ratings["item_id"].map(items.set_index("item_id")["year"]).astype(float)
    late = ratings["timestamp"] > ratings["timestamp"].quantile(0.8)
    assert years[late].mean() > years[~late].mean() + 2


def test_streaming_writer_matches_in_memory_and_source_reads_it(tmp_path: Path) -> None:
    config = SyntheticConfig.scaled(20_000, seed=11)
    ratings_path, items_path = write_synthetic(tmp_path, config)
    in_memory, _ = generate_synthetic(config.n_users, config.n_items, config.n_ratings, seed=11)
    pd.testing.assert_frame_equal(pd.read_parquet(ratings_path), in_memory)
    spec = DataSourceSpec(kind="files", ratings_path=str(ratings_path), items_path=str(items_path))
    raw_items = spec.read_raw_items()
    assert validate_items(raw_items).rejected.empty
    assert len(spec.read_raw_ratings()) == len(in_memory)
