"""`recsys bench quality`'s ablation: one refit of the tuned hybrid gives `hybrid` and `towers alone`, and `prior
alone` is the tuned hybrid's own prior."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.bench.quality import _Contenders
from recsys_core.synthetic import generate_synthetic
from recsys_core.training import train_hybrid
from recsys_core.tuning import SearchResult


def test_ablation_rows_are_the_tuned_hybrids_towers_and_prior(monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys_core.bench.quality as bench

    configs = []
    monkeypatch.setattr(bench, "train_hybrid", lambda *args: configs.append(args[-1]) or train_hybrid(*args))
    ratings, items = generate_synthetic(n_users=40, n_items=50, n_ratings=800, seed=2)
    args = argparse.Namespace(max_epochs=3, device="cpu", trials=1, minutes=1.0)
    contenders = _Contenders(args, items, None)
    params = {"dim": 8, "n_heads": 2, "history_len": 16, "batch_size": 16, "prior": "als+ease", "prior_dim": 4,
              "prior_weight": 5.0, "prior_ease_share": 0.5, "prior_reg": 20.0}  # fmt: skip
    contenders.tuned["hybrid"] = SearchResult("hybrid", params, 0.0, pd.DataFrame(), {"best_epoch": 2})
    hybrid = contenders.fit("hybrid", ratings, seed=0)
    towers = contenders.fit("towers alone", ratings, seed=0)
    prior = contenders.fit("prior alone", ratings, seed=0)
    assert hybrid.config.prior_weight == 5.0 and towers.config.prior_weight == 0.0  # the hybrid is left as it was
    users = hybrid.user_index.ids
    inputs = hybrid._user_inputs(users, torch.device("cpu"))
    with torch.no_grad():
        full = hybrid.model.user_vectors(*inputs) @ hybrid.model.item_vectors().T
        tower_scores = towers.model.user_vectors(*inputs) @ towers.model.item_vectors().T
    rows, cols = prior.user_index.encode(users), prior.item_index.encode(hybrid.item_index.ids)
    prior_scores = (prior.factors.users[rows] @ prior.factors.items[cols].T).astype(np.float32)
    np.testing.assert_allclose((full - tower_scores).numpy(), 5.0 * prior_scores, atol=1e-4)
    assert prior.factors.users.shape[1] == 8  # ALS and EASE columns side by side
    assert (configs[0].epochs, configs[0].horizon) == (2, 3)  # the best epoch, on the search's cosine schedule


def test_an_empty_cold_user_slice_is_not_applicable_and_stays_out_of_the_pass() -> None:
    from recsys_core.bench.quality import evaluate_goals

    def row(protocol: str, model: str, ndcg: float, cold_users: float, cold: float) -> dict:
        return {"protocol": protocol, "model": model, "ndcg@10": ndcg, "cold_users": cold_users, "cold_users_ndcg@10": cold}

    summary = []
    for protocol, cold_users in (("random 75/25", 0.0), ("temporal", 12.0)):
        cold = np.nan if cold_users == 0 else 0.2
        summary += [row(protocol, "ease", 0.40, cold_users, cold), row(protocol, "prior alone", 0.40, cold_users, cold),
                    row(protocol, "hybrid", 0.42, cold_users, np.nan if cold_users == 0 else 0.1)]  # fmt: skip
    goals = evaluate_goals(summary, 10.0)
    empty = goals["random 75/25: cold-user slice >= best baseline"]
    assert empty["value"] is None and empty["passed"] is None and not empty["applicable"] and "no test user" in empty["reason"]
    assert goals["temporal: cold-user slice >= best baseline"] == {"goal": 1.0, "value": 0.5, "passed": False, "users": 12}
    assert goals["random 75/25: hybrid nDCG@10 >= 1.02 x best tuned baseline (ease)"]["passed"] is True


def test_a_cold_user_slice_where_every_baseline_scores_0_passes_on_a_tie_and_fails_below() -> None:
    from recsys_core.bench.quality import _cold_user_goal

    baselines = pd.DataFrame({"cold_users": [2.0, 2.0], "cold_users_ndcg@10": [0.0, 0.0]}, index=["ease", "als"])
    tie = _cold_user_goal(pd.Series({"cold_users": 2.0, "cold_users_ndcg@10": 0.0}), baselines)
    assert tie["passed"] is True and tie["value"] is None and "every baseline scores 0" in tie["reason"]
    assert _cold_user_goal(pd.Series({"cold_users": 2.0, "cold_users_ndcg@10": 0.3}), baselines)["passed"] is True
    baselines["cold_users_ndcg@10"] = [0.2, 0.1]
    assert _cold_user_goal(pd.Series({"cold_users": 2.0, "cold_users_ndcg@10": 0.1}), baselines)["passed"] is False
