"""Splits: each row lands in exactly one part, per strategy semantics hold, and the same seed gives the same split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, asset, materialize

from recsys_core.split import leave_last_out_split, split_ratings, stratified_random_split, temporal_split
from recsys_dagster.assets.split import rating_splits
from recsys_dagster.resources.io_manager import RecsysIOManager


def make_ratings(n_users: int = 20, per_user: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    return pd.DataFrame(
        {
            "user_id": users.astype(np.int64),
            "item_id": np.concatenate([rng.choice(np.arange(1, 60), per_user, replace=False) for _ in range(n_users)]).astype(np.int64),
            "rating": rng.integers(1, 6, len(users)).astype(np.float32),
            "timestamp": rng.integers(0, 50, len(users)).astype(np.int64),  # many ties on purpose
        }
    )


def keys(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user_id"], frame["item_id"]))


@pytest.mark.parametrize("strategy", ["temporal", "random", "leave_last_out"])
def test_every_row_in_exactly_one_part_and_deterministic(strategy: str) -> None:
    ratings = make_ratings()
    split = split_ratings(ratings, strategy, 0.1, 0.2, seed=3)
    parts = [keys(split.train), keys(split.validation), keys(split.test)]
    assert sum(map(len, parts)) == len(ratings)
    assert set().union(*parts) == keys(ratings)
    again = split_ratings(ratings, strategy, 0.1, 0.2, seed=3)
    pd.testing.assert_frame_equal(split.test, again.test)
    assert list(split.train.columns) == ["user_id", "item_id", "rating", "timestamp"]


def test_temporal_split_is_a_global_time_cut() -> None:
    split = temporal_split(make_ratings(), validation_fraction=0.1, test_fraction=0.2, seed=1)
    assert split.sizes() == {"train": 168, "validation": 24, "test": 48}
    assert split.train["timestamp"].max() <= split.validation["timestamp"].min()
    assert split.validation["timestamp"].max() <= split.test["timestamp"].min()


def test_random_split_is_stratified_per_user_and_seeded() -> None:
    ratings = make_ratings()
    split = stratified_random_split(ratings, validation_fraction=0.0, test_fraction=0.25, seed=42)
    assert (split.test.groupby("user_id").size() == 3).all() and (split.train.groupby("user_id").size() == 9).all()
    assert split.validation.empty
    other = stratified_random_split(ratings, 0.0, 0.25, seed=7)
    assert keys(other.test) != keys(split.test)


def test_leave_last_out_holds_out_each_users_latest() -> None:
    ratings = make_ratings(per_user=5)
    ratings.loc[ratings.index % 5 == 4, "timestamp"] = 1_000  # one clear latest rating per user
    split = leave_last_out_split(ratings, seed=0)
    assert (split.test.groupby("user_id").size() == 1).all() and (split.test["timestamp"] == 1_000).all()
    assert (split.validation.groupby("user_id").size() == 1).all()
    assert len(split.train) == len(ratings) - 2 * 20


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown split strategy"):
        split_ratings(make_ratings(), "by_moon_phase", 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="fractions"):
        temporal_split(make_ratings(), 0.5, 0.5)
    with pytest.raises(ValueError, match="canonical columns"):
        temporal_split(make_ratings().drop(columns="timestamp"))


RATINGS = make_ratings()


@asset
def validated_ratings() -> pd.DataFrame:
    return RATINGS


def test_split_asset_materialises_three_parts(tmp_path) -> None:
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [validated_ratings, rating_splits],
            resources={"io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets"))},
            instance=instance,
            run_config={"ops": {"rating_splits": {"config": {"strategy": "random", "test_fraction": 0.25, "validation_fraction": 0.0}}}},
        )
        assert result.success
        train, test = result.output_for_node("rating_splits", "train_ratings"), result.output_for_node("rating_splits", "test_ratings")
        assert len(train) + len(test) == len(RATINGS)
        assert (tmp_path / "assets" / "test_ratings.parquet").exists()
