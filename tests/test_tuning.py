"""The validation search: seeded and reproducible, pruning runs, every baseline's space fits its model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recsys_core.baselines import RANKING_BASELINES
from recsys_core.schema import IdIndex
from recsys_core.split import stratified_random_split
from recsys_core.synthetic import generate_synthetic
from recsys_core.training import TrainConfig
from recsys_core.tuning import BASELINE_SPACES, Budget, tune_baseline, tune_hybrid
from recsys_core.tuning.space import SEQUENTIAL_TRIAL

TINY = TrainConfig(dim=8, n_heads=2, history_len=16, batch_size=16, epochs=4, prior_dim=8, rating_prior_dim=0,
                   show_progress=False, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def split():
    ratings, items = generate_synthetic(n_users=50, n_items=60, n_ratings=1000, seed=3)
    return stratified_random_split(ratings, 0.2, 0.0, seed=0), items


def test_hybrid_search_is_deterministic_for_a_seed(split) -> None:
    parts, items = split
    # a minutes budget far above the trials' cost: the wall-clock limit, not the seed, would otherwise decide (under
    # load) how many trials each run gets
    budget = Budget(trials=3, minutes=120, seed=5)
    runs = [tune_hybrid(parts.train, parts.validation, items, None, TINY, budget) for _ in range(2)]
    assert runs[0].best_params == runs[1].best_params and runs[0].best_value == runs[1].best_value
    assert runs[0].trials["value"].tolist() == runs[1].trials["value"].tolist()
    assert len(runs[0].trials) == 3 and 1 <= runs[0].best_attrs["best_epoch"] <= TINY.epochs
    assert runs[0].trials.loc[0, "lr"] == TINY.lr and runs[0].trials.loc[0, "prior"] == TINY.prior  # trial 0: defaults
    assert runs[0].trials.loc[1, "encoder_layers"] == SEQUENTIAL_TRIAL["encoder_layers"] == 1  # trial 1: the causal preset
    assert runs[0].trials.loc[1, "batch_size"] == SEQUENTIAL_TRIAL["batch_size"]
    assert runs[0].trials.loc[1, "prior"] == SEQUENTIAL_TRIAL["prior"] == "ease"
    other = tune_hybrid(parts.train, parts.validation, items, None, TINY, replace(budget, seed=6))
    assert other.trials.loc[2, "lr"] != runs[0].trials.loc[2, "lr"]  # the seed drives the sampler


def test_every_baseline_space_builds_its_model_and_the_search_keeps_the_best(split) -> None:
    parts, items = split
    assert set(BASELINE_SPACES) == set(RANKING_BASELINES)
    result = tune_baseline("ease", parts.train, parts.validation, items, Budget(trials=4, seed=1))
    assert result.best_value == pytest.approx(np.nanmax(result.trials["value"]))
    assert result.trials.loc[result.trials["value"].idxmax(), "reg"] == pytest.approx(result.best_params["reg"])
    assert len(tune_baseline("most_popular", parts.train, parts.validation, items, Budget(trials=5)).trials) == 1
    with pytest.raises(ValueError, match="trials >= 1"):
        Budget(trials=0)


def test_ease_prior_is_its_low_rank_scores_and_trains(split) -> None:
    from recsys_core.baselines import EASE
    from recsys_core.training import train_hybrid

    parts, items = split
    ease = EASE(reg=50.0).fit(parts.train, items)
    users, item_factors = ease.low_rank(len(ease.item_index))  # full rank: exactly EASE's scores
    np.testing.assert_allclose(users @ item_factors.T, ease.seen.astype(np.float32) @ ease.weights, atol=1e-4)
    wide_users, wide_items = ease.low_rank(len(ease.user_index) + len(ease.item_index))  # above its rank: zero columns
    assert wide_users.shape[1] == wide_items.shape[1] == len(ease.user_index) + len(ease.item_index)
    np.testing.assert_allclose(wide_users @ wide_items.T, users @ item_factors.T, atol=1e-4)
    config = replace(TINY, prior="ease", prior_reg=50.0, epochs=1)
    bundle = train_hybrid(parts.train, None, items, None, config).bundle
    prior_users = bundle.model.user_prior[: bundle.config.n_users].numpy()
    low_users, _ = ease.low_rank(config.prior_dim)
    np.testing.assert_allclose(prior_users, low_users[ease.user_index.encode(bundle.user_index.ids)], atol=1e-4)
    with pytest.raises(ValueError, match="prior must be one of"):
        TrainConfig(prior="knn")


def test_blended_prior_is_a_convex_mix_of_als_and_rescaled_ease(split) -> None:
    from recsys_core.training import prior_factors

    parts, items = split
    ids = IdIndex.from_ids(parts.train["user_id"]), IdIndex.from_ids(items["item_id"])
    als = prior_factors(parts.train, items, None, replace(TINY, prior="als"), *ids)
    ease = prior_factors(parts.train, items, None, replace(TINY, prior="ease", prior_reg=50.0), *ids)
    users, item_factors = prior_factors(parts.train, items, None, replace(TINY, prior="als+ease", prior_reg=50.0,
                                                                          prior_ease_share=0.25), *ids)  # fmt: skip
    p = TINY.prior_dim
    assert users.shape[1] == item_factors.shape[1] == 2 * p == replace(TINY, prior="als+ease").prior_columns
    np.testing.assert_allclose(users[:, :p], 0.75 * als[0]) and np.testing.assert_allclose(item_factors[:, p:], ease[1])
    als_norm = np.linalg.norm(als[0] @ als[1].T)
    ease_part = users[:, p:] @ item_factors[:, p:].T  # rescaled to ALS's norm, times the share
    assert np.linalg.norm(ease_part) == pytest.approx(0.25 * als_norm, rel=1e-6)
    ease_scores = ease[0] @ ease[1].T
    np.testing.assert_allclose(ease_part / np.linalg.norm(ease_part), ease_scores / np.linalg.norm(ease_scores), atol=1e-6)
    with pytest.raises(ValueError, match="prior_ease_share"):
        TrainConfig(prior_ease_share=1.5)


def test_the_minutes_never_cut_the_enqueued_trials_only_the_sampled_ones() -> None:
    from recsys_core.tuning.search import _search

    def space(trial):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def objective(params, trial):
        return params["x"]

    # a budget that is over before the first trial ends: the two presets still run, no sampled trial does
    result = _search("toy", space, objective, Budget(trials=5, minutes=1e-9, seed=0), False, {"x": 0.1}, {"x": 0.7})
    assert list(result.trials["x"]) == [0.1, 0.7] and result.best_params == {"x": 0.7}
    assert len(_search("toy", space, objective, Budget(trials=4, minutes=60, seed=0), False, {"x": 0.1}).trials) == 4
