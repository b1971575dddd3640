"""Metric definitions checked against hand-computed values and Microsoft Recommenders' published test values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys_core import metrics as m


def _recs(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


def _relevant(rows: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


@pytest.fixture
def hand_example() -> tuple[pd.DataFrame, pd.DataFrame]:
    # user 1: hit at position 2 of 3, 3 relevant; user 2: one item listed, k=3 > list; user 3: relevant, no recs;
    # user 4: recs but nothing relevant (ignored).
    recs = _recs([(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4), (2, 20, 1), (4, 40, 1)])
    relevant = _relevant([(1, 11), (1, 13), (1, 99), (2, 20), (3, 30)])
    return recs, relevant


def test_per_user_values_match_hand_computation(hand_example):
    recs, relevant = hand_example
    table = m.per_user_ranking_metrics(recs, relevant, k=3)
    assert list(table.index) == [1, 2, 3]
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    u1, u2, u3 = table.loc[1], table.loc[2], table.loc[3]
    assert u1["precision@3"] == pytest.approx(1 / 3)
    assert u1["recall@3"] == pytest.approx(1 / 3)
    assert u1["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg3)
    assert u1["map@3"] == pytest.approx((1 / 2) / 3)
    assert u1["hr@3"] == 1.0 and u1["mrr"] == pytest.approx(0.5)
    # k larger than the list: precision still divides by k; the rest are perfect.
    assert u2["precision@3"] == pytest.approx(1 / 3)
    assert u2[["recall@3", "ndcg@3", "map@3", "hr@3", "mrr"]].tolist() == [1.0] * 5
    assert u3.tolist() == [0.0] * 6


def test_means_over_users_in_relevant(hand_example):
    recs, relevant = hand_example
    result = m.ranking_metrics(recs, relevant, k=3)
    assert set(result) == {"precision@3", "recall@3", "ndcg@3", "map@3", "hr@3", "mrr"}
    assert result["hr@3"] == pytest.approx(2 / 3)
    assert result["mrr"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert result["recall@3"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_fewer_relevant_than_k_caps_ideal_at_relevant_count():
    recs = _recs([(1, i, i) for i in range(1, 6)])
    relevant = _relevant([(1, 1), (1, 2)])
    result = m.ranking_metrics(recs, relevant, k=5)
    assert result["ndcg@5"] == pytest.approx(1.0)
    assert result["map@5"] == pytest.approx(1.0)
    assert result["precision@5"] == pytest.approx(2 / 5)


def test_more_relevant_than_k_map_divides_by_k():
    recs = _recs([(1, 1, 1), (1, 2, 2)])
    relevant = _relevant([(1, i) for i in range(1, 6)])
    result = m.ranking_metrics(recs, relevant, k=2)
    assert result["map@2"] == pytest.approx(1.0)
    assert result["ndcg@2"] == pytest.approx(1.0)
    assert result["recall@2"] == pytest.approx(2 / 5)


def test_ties_in_rank_break_by_item_id():
    # Items 51 and 52 share rank 1: 51 takes position 1, so with k=1 the relevant 52 falls outside the list.
    recs = _recs([(5, 52, 1), (5, 51, 1)])
    assert m.ranking_metrics(recs, _relevant([(5, 52)]), k=1)["hr@1"] == 0.0
    assert m.ranking_metrics(recs, _relevant([(5, 51)]), k=1)["hr@1"] == 1.0
    assert m.ranking_metrics(recs, _relevant([(5, 52)]), k=2)["mrr"] == pytest.approx(0.5)


def test_row_order_does_not_matter():
    recs = _recs([(1, 10, 3), (1, 11, 1), (1, 12, 2)])
    relevant = _relevant([(1, 10)])
    assert m.ranking_metrics(recs, relevant, k=3)["mrr"] == pytest.approx(1 / 3)
    shuffled = recs.sample(frac=1.0, random_state=0)
    assert m.ranking_metrics(shuffled, relevant, k=3) == m.ranking_metrics(recs, relevant, k=3)


def test_empty_relevant_and_empty_recs():
    recs = _recs([(1, 10, 1)])
    assert m.ranking_metrics(recs, _relevant([]), k=5) == {name: 0.0 for name in m.ranking_metric_names(5)}
    assert m.ranking_metrics(_recs([]), _relevant([(1, 10)]), k=5)["ndcg@5"] == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="rank"):
        m.ranking_metrics(pd.DataFrame({"user_id": [1], "item_id": [1]}), _relevant([(1, 1)]), k=1)
    with pytest.raises(ValueError, match="repeat"):
        m.ranking_metrics(_recs([(1, 1, 1), (1, 1, 2)]), _relevant([(1, 1)]), k=2)
    with pytest.raises(ValueError, match="k must be"):
        m.ranking_metrics(_recs([(1, 1, 1)]), _relevant([(1, 1)]), k=0)
    with pytest.raises(ValueError, match="y_pred has 2"):
        m.rmse([1.0], [1.0, 2.0])


def test_rmse_mae():
    assert m.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert m.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)


# Microsoft Recommenders, tests/unit/recommenders/evaluation/conftest.py (rating_true, rating_pred fixtures) and the
# published values in test_python_evaluation.py: precision@10 0.26666, recall@10 0.37777, ndcg@10 0.38172 (binary),
# map_at_k@10 0.23613. Every user there has recommendations, so our "users in relevant" population is the same.
def _recommenders_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    truth = pd.DataFrame(
        {
            "user_id": [1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 1],
            "item_id": [3, 1, 4, 5, 6, 7, 2, 5, 6, 8, 9, 10, 11, 12, 13, 14, 1, 2],
        }
    )
    pred = pd.DataFrame(
        {
            "user_id": [1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 1],
            "item_id": [12, 10, 3, 5, 11, 13, 4, 10, 7, 13, 1, 3, 5, 2, 11, 14, 3, 10],
            "prediction": [12, 14, 13, 12, 11, 10, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 14, 13],
        }
    )
    pred["rank"] = pred.groupby("user_id")["prediction"].rank(ascending=False, method="first").astype(int)
    return pred, truth


def test_matches_microsoft_recommenders_published_values():
    recs, truth = _recommenders_fixture()
    result = m.ranking_metrics(recs, truth, k=10)
    assert result["precision@10"] == pytest.approx(0.26666, abs=1e-4)
    assert result["recall@10"] == pytest.approx(0.37777, abs=1e-4)
    assert result["ndcg@10"] == pytest.approx(0.38172, abs=1e-4)
    assert result["map@10"] == pytest.approx(0.23613, abs=1e-4)
    perfect = truth.assign(rank=truth.groupby("user_id").cumcount() + 1)
    assert m.ranking_metrics(perfect, truth, k=10)["precision@10"] == pytest.approx(0.6)
    assert m.ranking_metrics(perfect, truth, k=10)["ndcg@10"] == pytest.approx(1.0)
    assert m.ranking_metrics(perfect, truth, k=10)["map@10"] == pytest.approx(1.0)


@pytest.fixture
def diversity_data() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    # Recommenders' `diversity_data` fixture: published novelty 2.83333, catalog coverage 0.8 (of the 5 train
    # items), feature-vector diversity 0.5 for every user.
    train = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 3, 3], "item_id": [1, 2, 4, 3, 4, 3, 4, 5]})
    recs = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [3, 5, 2, 5, 1, 2], "rank": [1, 2] * 3})
    item_ids = np.array([1, 2, 3, 4, 5])
    vectors = np.array(
        [[0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 1, 1]], dtype=np.float32
    )
    return train, recs, item_ids, vectors


def test_beyond_accuracy_match_recommenders(diversity_data):
    train, recs, item_ids, vectors = diversity_data
    assert m.novelty(recs, train) == pytest.approx(2.83333, abs=1e-4)
    assert m.catalog_coverage(recs, n_catalog_items=5) == pytest.approx(0.8)
    per_user = m.per_user_intra_list_diversity(recs, item_ids, vectors)
    assert per_user.tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert m.intra_list_diversity(recs, item_ids, vectors) == pytest.approx(0.5)


def test_intra_list_diversity_three_items_by_hand():
    item_ids = np.array([7, 8, 9])
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # cosines: 0, 1/sqrt2, 1/sqrt2
    recs = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [7, 8, 9, 7], "rank": [1, 2, 3, 1]})
    per_user = m.per_user_intra_list_diversity(recs, item_ids, vectors)
    assert list(per_user.index) == [1]  # a single-item list has no pairs
    assert per_user.loc[1] == pytest.approx(1 - (2 / math.sqrt(2)) / 3)
    with pytest.raises(KeyError, match="no vector"):
        m.per_user_intra_list_diversity(recs.assign(item_id=[7, 8, 99, 7]), item_ids, vectors)


def test_novelty_of_unseen_item_is_maximal():
    train = pd.DataFrame({"item_id": [1, 1, 2, 3]})
    recs = pd.DataFrame({"user_id": [1], "item_id": [42], "rank": [1]})
    assert m.novelty(recs, train) == pytest.approx(2.0)


def test_gini_and_popularity_bias():
    assert m.gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert m.gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    train = pd.DataFrame({"item_id": [1, 1, 1, 2, 2, 3]})
    recs = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "rank": [1, 1]})
    bias = m.popularity_bias(recs, train, catalog_item_ids=np.array([1, 2, 3, 4]))
    assert bias["mean_popularity_percentile"] == pytest.approx(1.0)
    assert bias["gini_exposure"] == pytest.approx(0.75)


def test_vectorised_on_a_larger_random_case_agrees_with_a_plain_loop():
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for user in range(50):
        items = rng.choice(100, size=rng.integers(1, 15), replace=False)
        rows += [(user, int(item), pos + 1) for pos, item in enumerate(items)]
        truth += [(user, int(item)) for item in rng.choice(100, size=rng.integers(1, 8), replace=False)]
    recs, relevant = _recs(rows), _relevant(truth)
    table = m.per_user_ranking_metrics(recs, relevant, k=10)
    for user, group in relevant.groupby("user_id"):
        rel = set(group.item_id)
        listed = recs[recs.user_id == user].sort_values("rank").item_id.tolist()[:10]
        gains = [1 / math.log2(i + 2) for i, item in enumerate(listed) if item in rel]
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
        assert table.loc[user, "ndcg@10"] == pytest.approx(sum(gains) / ideal)
        hits = [i + 1 for i, item in enumerate(listed) if item in rel]
        ap = sum((n + 1) / pos for n, pos in enumerate(hits)) / min(len(rel), 10)
        assert table.loc[user, "map@10"] == pytest.approx(ap)
