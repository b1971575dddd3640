"""Co-consumed pair mining for the text fine-tune: hand-checked neighbours, deterministic sampling for a seed, and no
validation or test item of a cold-item split among the pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.bench.coldstart import split_items
from recsys_core.finetune import FineTuneConfig, fine_tune
from recsys_core.finetune.pairs import cooccurrence_neighbours
from recsys_core.text_features import TextEncoder
from tests.test_finetune import TINY, make_ratings
from tests.test_text_features import make_items, write_tiny_bert


def ratings_of(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs], "rating": 4.0})


def test_neighbours_follow_the_shrunk_cosine() -> None:
    # items 10 and 20 share users 1, 2, 3; 10 and 30 share user 3 only; 40 shares nobody
    train = ratings_of([(1, 10), (2, 10), (3, 10), (1, 20), (2, 20), (3, 20), (3, 30), (4, 30), (5, 40)])
    neighbours = cooccurrence_neighbours(train, np.array([10, 20, 30, 40]), k=2, shrink=0.0, min_common=1)
    assert neighbours.rows[0, 0] == 1 and neighbours.rows[0, 1] == 2  # 10: 20 (cos 1), then 30 (cos 1/sqrt(6))
    assert neighbours.valid[0].all()
    assert neighbours.rows[2].tolist() == [0, 1] and neighbours.valid[2].all()  # 30: 10 and 20 tie, item order breaks it
    assert not neighbours.valid[3].any()  # 40: nobody
    strict = cooccurrence_neighbours(train, np.array([10, 20, 30, 40]), k=2, shrink=0.0, min_common=2)
    assert strict.valid[0].tolist() == [True, False] and not strict.valid[2].any()
    assert strict.has_any().tolist() == [True, True, False, False]


def test_repeated_ratings_count_once() -> None:
    once = ratings_of([(1, 10), (1, 20), (2, 20), (2, 30)])
    twice = pd.concat([once, ratings_of([(1, 10), (1, 20)])])
    first = cooccurrence_neighbours(once, np.array([10, 20, 30]), k=2, shrink=1.0, min_common=1)
    second = cooccurrence_neighbours(twice, np.array([10, 20, 30]), k=2, shrink=1.0, min_common=1)
    assert np.array_equal(first.rows, second.rows) and np.array_equal(first.valid, second.valid)


def test_mining_and_sampling_are_deterministic_and_exclude_cold_items() -> None:
    rng = np.random.default_rng(0)
    ratings = pd.DataFrame({"user_id": rng.integers(0, 60, 3000), "item_id": rng.integers(0, 200, 3000), "rating": 4.0})
    validation, test = split_items(ratings, 0.1, seed=5)
    train = ratings[~ratings["item_id"].isin(np.concatenate([validation, test]))]
    rated = np.unique(ratings["item_id"].to_numpy(np.int64))  # cold items asked for too: they must stay unpaired
    neighbours = cooccurrence_neighbours(train, rated, k=5)
    again = cooccurrence_neighbours(train.sample(frac=1.0, random_state=1), rated, k=5)  # row order does not matter
    assert np.array_equal(neighbours.rows, again.rows) and np.array_equal(neighbours.valid, again.valid)
    cold = set(validation) | set(test)
    paired = set(rated[neighbours.rows[neighbours.valid]])
    assert paired and not paired & cold
    assert not neighbours.has_any()[np.isin(rated, list(cold))].any()

    anchors = np.flatnonzero(neighbours.has_any())
    drawn = neighbours.sample(anchors, np.random.default_rng(3))
    assert np.array_equal(drawn, neighbours.sample(anchors, np.random.default_rng(3)))
    assert not np.array_equal(drawn, neighbours.sample(anchors, np.random.default_rng(4)))
    for anchor, positive in zip(anchors, drawn):
        assert positive in neighbours.rows[anchor][neighbours.valid[anchor]] and positive != anchor
    with pytest.raises(ValueError, match="at least one neighbour"):
        neighbours.sample(np.flatnonzero(~neighbours.has_any())[:1], np.random.default_rng(0))


def test_pair_loss_changes_the_adapter_deterministically(tmp_path) -> None:
    items = make_items(16)
    train = make_ratings(items, n_users=10)
    base = TextEncoder.load(str(write_tiny_bert(tmp_path / "bert")), "cpu", cache_dir=tmp_path)
    paired = FineTuneConfig(**{**TINY.to_dict(), "epochs": 2, "pair_weight": 1.0, "pair_min_common": 1})
    without, _ = fine_tune(items, train, base, FineTuneConfig(**{**TINY.to_dict(), "epochs": 2}))
    first, losses = fine_tune(items, train, base, paired)
    again, _ = fine_tune(items, train, base, paired)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.allclose(first[name], without[name]) for name in first if name.startswith("bert."))
    with pytest.raises(ValueError, match="pair_weight"):
        FineTuneConfig(pair_weight=-1.0)
