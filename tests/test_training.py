"""Training, baselines and the `trained_model` asset on tiny synthetic data (seconds, CPU)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from dagster import AssetKey, DagsterInstance, asset, materialize

from recsys_core.baselines import BiasedMF, ImplicitALS, MostPopular
from recsys_core.metrics import rmse
from recsys_core.model import ModelBundle
from recsys_core.split import stratified_random_split
from recsys_core.synthetic import generate_synthetic
from recsys_core.text_features import ItemTextFeatures
from recsys_core.training import TrainConfig, _factors_from_text, train_hybrid
from recsys_dagster.assets.split import rating_splits
from recsys_dagster.assets.training import trained_model, tuned_config
from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.resources.tracking import MlflowResource

TINY = dict(dim=8, n_heads=2, history_len=16, batch_size=16, show_progress=False, device="cpu")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_synthetic(n_users=60, n_items=80, n_ratings=1500, seed=1)


def text_for(items: pd.DataFrame, dim: int = 6, seed: int = 0) -> ItemTextFeatures:
    ids = np.sort(items["item_id"].to_numpy(np.int64))
    vectors = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ItemTextFeatures(ids, vectors, n_encoded=len(ids), n_reused=0, model_id="random", fingerprint="f" * 16)


def test_training_is_deterministic_and_reports_history(data) -> None:
    ratings, items = data
    split = stratified_random_split(ratings, 0.15, 0.15, seed=0)
    config = TrainConfig(epochs=3, patience=5, **TINY)
    first = train_hybrid(split.train, split.validation, items, text_for(items), config)
    second = train_hybrid(split.train, split.validation, items, text_for(items), config)
    assert [row["epoch"] for row in first.history] == [1.0, 2.0, 3.0]
    assert {"train_loss", "train_ranking_loss", "train_rating_mse", "val_ndcg@10", "val_rmse"} <= set(first.history[0])
    assert np.isfinite([row["train_loss"] for row in first.history]).all()
    assert 1 <= first.best_epoch <= 3 and "val_ndcg@10" in first.final_metrics
    torch.testing.assert_close(first.bundle.model.item_vectors(), second.bundle.model.item_vectors())
    assert first.bundle.config.n_items == len(items)  # text-only items are in the catalogue


def test_training_lowers_the_loss_and_sampled_softmax_runs(data) -> None:
    ratings, items = data
    full = train_hybrid(ratings, None, items, None, TrainConfig(epochs=8, lr=2e-2, **TINY))
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    sampled = train_hybrid(ratings, None, items, text_for(items), TrainConfig(epochs=2, n_negatives=20, **TINY))
    assert np.isfinite(sampled.history[-1]["train_ranking_loss"])


def test_training_loads_implicit_als_and_biased_mf_as_the_priors(data) -> None:
    ratings, items = data
    result = train_hybrid(ratings, None, items, None, TrainConfig(epochs=1, prior_dim=4, prior_weight=3.0, **TINY))
    als = ImplicitALS(dim=4, seed=TrainConfig().seed).fit(ratings, items)
    model = result.bundle.model
    assert model.config.prior_dim == 4 and model.config.prior_weight == 3.0
    np.testing.assert_allclose(model.items.prior.numpy(), als.factors.items, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.user_prior[:-1].numpy(), als.factors.users, rtol=1e-5, atol=1e-6)
    mf = BiasedMF(dim=3, seed=TrainConfig().seed).fit(ratings, items)
    with_mf = train_hybrid(ratings, None, items, None, TrainConfig(epochs=1, rating_prior_dim=3, **TINY))
    np.testing.assert_allclose(with_mf.bundle.model.items.rating_prior_bias.numpy(), mf.factors.item_bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(with_mf.bundle.model.user_rating_prior[:-1].numpy(), mf.factors.users, rtol=1e-5, atol=1e-6)
    off = train_hybrid(ratings, None, items, None, TrainConfig(epochs=1, prior_dim=0, rating_prior_dim=0, **TINY))
    assert off.bundle.config.output_dim == 8 + 1 and off.bundle.config.rating_prior_weight == 0.0


def test_unrated_items_get_prior_factors_mapped_from_their_text() -> None:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(40, 5))
    factors = text @ rng.normal(size=(5, 3)) + 0.5  # an exactly linear map with an intercept
    rated = np.arange(40) < 30
    mapped = _factors_from_text(text, np.where(rated[:, None], factors, 0.0), rated, reg=1e-6)
    np.testing.assert_array_equal(mapped[rated], factors[rated])
    np.testing.assert_allclose(mapped[~rated], factors[~rated], atol=1e-4)
    np.testing.assert_array_equal(_factors_from_text(text, factors, np.ones(40, bool)), factors)


def test_bad_training_input_is_named(data) -> None:
    ratings, items = data
    with pytest.raises(ValueError, match="canonical columns"):
        train_hybrid(ratings.drop(columns="timestamp"), None, items, None, TrainConfig(epochs=1, **TINY))
    with pytest.raises(ValueError, match="history_keep"):
        TrainConfig(history_keep=1.5)


def test_baselines_share_the_recommend_interface(data) -> None:
    ratings, items = data
    split = stratified_random_split(ratings, 0.0, 0.2, seed=0)
    users = np.unique(split.test["user_id"])
    popular = MostPopular().fit(split.train, items)
    recs = popular.recommend(users, k=5)
    top = split.train["item_id"].value_counts()
    first_user = users[0]
    seen = set(split.train.loc[split.train.user_id == first_user, "item_id"])
    unseen_counts = [count for item, count in top.items() if item not in seen]
    first_items = recs.loc[recs.user_id == first_user, "item_id"].tolist()
    assert [top[item] for item in first_items] == unseen_counts[:5]  # most rated first (ties in any order)
    for model in (popular, BiasedMF(dim=4, epochs=3), ImplicitALS(dim=4, iterations=2)):
        model = model if model is popular else model.fit(split.train, items)
        recs = model.recommend(users, k=5)
        assert list(recs.columns) == ["user_id", "item_id", "rank", "score"] and len(recs) == 5 * len(users)
        merged = recs.merge(split.train, on=["user_id", "item_id"])
        assert merged.empty  # training items are excluded
    mf = BiasedMF(dim=4, epochs=30, lr=1e-2).fit(split.train, items)
    predicted = mf.predict_ratings(split.train["user_id"].to_numpy(), split.train["item_id"].to_numpy())
    constant = np.full(len(split.train), split.train["rating"].mean())
    assert rmse(split.train["rating"], predicted) < rmse(split.train["rating"], constant)


SOURCES: dict[str, object] = {}


@asset
def validated_ratings() -> pd.DataFrame:
    return SOURCES["ratings"]


@asset
def validated_items() -> pd.DataFrame:
    return SOURCES["items"]


@asset
def item_text_features() -> dict:
    return SOURCES["text_manifest"]


def _materialize_training(tmp_path: Path, instance: DagsterInstance, trials: int, tracking_uri: str):
    return materialize(
        [validated_ratings, validated_items, item_text_features, rating_splits, tuned_config, trained_model],
        resources={
            "io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")),
            "mlflow": MlflowResource(tracking_uri=tracking_uri, experiment_name="test"),
            "compute": ComputeResource(device="cpu"),
        },
        run_config={"ops": {
            "rating_splits": {"config": {"strategy": "random"}},
            "tuned_config": {"config": {"trials": trials, "epochs": 2}},
            "trained_model": {"config": {"epochs": 2, "dim": 8, "history_len": 16, "batch_size": 16}},
        }},  # fmt: skip
        instance=instance,
    )


def _set_sources(data, tmp_path: Path) -> tuple[ItemTextFeatures, str]:
    """Fills SOURCES with the data and its saved text features; returns them and a fresh MLflow tracking URI."""
    ratings, items = data
    features = text_for(items)
    path = features.save(tmp_path / "features.npz")
    SOURCES.update(ratings=ratings, items=items, text_manifest={"path": str(path), "fingerprint": features.fingerprint})
    return features, f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_trained_model_asset_tracks_a_run_in_mlflow(data, tmp_path: Path, recsys_home: Path) -> None:
    features, tracking_uri = _set_sources(data, tmp_path)
    with DagsterInstance.ephemeral() as instance:
        result = _materialize_training(tmp_path, instance, 0, tracking_uri)
        assert result.success
        manifest = result.output_for_node("trained_model")
        event = instance.get_latest_materialization_event(AssetKey("trained_model")).asset_materialization
    bundle = ModelBundle.load(manifest["model_dir"])
    assert Path(manifest["model_dir"]).is_relative_to(recsys_home)
    assert bundle.config.dim == 8 and manifest["text_features_fingerprint"] == features.fingerprint
    assert {"val_ndcg@10", "val_rmse"} <= set(manifest["metrics"])
    run = mlflow.MlflowClient(tracking_uri).get_run(manifest["run_id"])
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.asset_key"] == "trained_model"
    assert run.data.tags["data_fingerprint"] == manifest["data_fingerprint"]
    assert run.data.params["dim"] == "8"
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(manifest["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri).list_artifacts(manifest["run_id"], "model")}
    assert "model/model.safetensors" in artifacts
    assert "data:image/png;base64," in event.metadata["loss_curve"].value
    assert event.metadata["n_parameters"].value == bundle.model.n_parameters()
    assert event.metadata["mlflow_run"].value == manifest["run_url"]


def test_tuned_config_searches_on_validation_with_trials_nested_under_the_training_run(data, tmp_path: Path) -> None:
    _, tracking_uri = _set_sources(data, tmp_path)
    with DagsterInstance.ephemeral() as instance:
        result = _materialize_training(tmp_path, instance, 2, tracking_uri)
        assert result.success
    tuned, manifest = result.output_for_node("tuned_config"), result.output_for_node("trained_model")
    assert manifest["run_id"] == tuned["run_id"] and manifest["train_config"]["lr"] == tuned["params"]["lr"]
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(manifest["run_id"])
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.info.run_name for run in trials) == ["hybrid-trial-0", "hybrid-trial-1"]
    assert "tuned_lr" in parent.data.params and "final_val_ndcg_at_10" in parent.data.metrics


def test_causal_batches_predict_the_next_items_from_the_earlier_ones(data) -> None:
    from recsys_core.training import HybridTrainer

    ratings, items = data
    trainer = HybridTrainer(ratings, items, None, TrainConfig(epochs=1, next_items=2, **TINY))
    users = torch.arange(20)
    _, hist_items, _, hist_mask, targets, _, target_mask = trainer._batch(users)
    stored_items, _, stored_mask = trainer.padded.rows(users)
    for row in range(len(users)):
        order = stored_items[row][stored_mask[row]].tolist()  # the user's items in time order
        history = hist_items[row][hist_mask[row]].tolist()
        wanted = targets[row][target_mask[row]].tolist()
        cut = order.index(wanted[0])
        assert 1 <= len(wanted) <= 2 and wanted == order[cut : cut + len(wanted)]  # the next items, in order
        assert history == order[:cut][-TINY["history_len"]:]  # the latest items before the cut, oldest first
        assert hist_mask[row, -len(history):].all()  # right-aligned, as build_histories serves them
    with pytest.raises(ValueError, match="next_items"):
        TrainConfig(next_items=-1)


def test_sequence_batches_target_the_next_item_at_every_position_and_training_learns(data) -> None:
    from recsys_core.training import HybridTrainer

    ratings, items = data
    config = TrainConfig(epochs=4, encoder_layers=1, rating_prior_dim=0, prior_dim=0, **TINY)
    trainer = HybridTrainer(ratings, items, None, config)
    users = torch.arange(20)
    _, hist_items, _, hist_mask, next_items, next_ratings = trainer._batch(users)
    stored_items, stored_ratings, stored_mask = trainer.padded.rows(users)
    L = TINY["history_len"]
    for row in range(len(users)):
        order = stored_items[row][stored_mask[row]].tolist()  # the user's items in time order
        latest = order[-(L + 1):]
        assert hist_items[row][hist_mask[row]].tolist() == latest[:-1]  # every item but the last, oldest first
        assert next_items[row][hist_mask[row]].tolist() == latest[1:]  # each position's target: the next item
        assert next_ratings[row][hist_mask[row]].tolist() == stored_ratings[row][stored_mask[row]].tolist()[-len(latest) + 1:]
        assert hist_mask[row, L - len(latest) + 1:].all() and not hist_mask[row, : L - len(latest) + 1].any()
    result = train_hybrid(ratings, None, items, None, config)
    losses = [row["train_ranking_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.bundle.model.config.encoder_layers == 1
    with pytest.raises(ValueError, match="encoder_layers"):
        TrainConfig(encoder_layers=-1)


def test_the_priors_weight_is_fitted_on_validation(data) -> None:
    from recsys_core.training import PRIOR_WEIGHT_STEPS, HybridTrainer

    ratings, items = data
    split = stratified_random_split(ratings, 0.2, 0.0, seed=0)
    config = TrainConfig(epochs=2, prior_dim=4, prior_weight=3.0, rating_prior_dim=0, **TINY)
    result = train_hybrid(split.train, split.validation, items, None, config)
    chosen = result.bundle.config.prior_weight
    assert chosen in {3.0 * step for step in PRIOR_WEIGHT_STEPS}
    trainer = HybridTrainer(split.train, items, None, config)  # the same seed: the same towers, scored per weight
    trainer.model.load_state_dict(result.bundle.model.state_dict())
    trainer.model.eval()
    scores = {}
    for step in PRIOR_WEIGHT_STEPS:
        trainer.model.config.prior_weight = 3.0 * step
        scores[3.0 * step] = trainer.evaluate(split.validation)["val_ndcg@10"]
    assert scores[chosen] == max(scores.values()) == result.final_metrics["val_ndcg@10"]


def test_a_refit_with_the_search_horizon_repeats_the_searchs_learning_rates(data) -> None:
    from recsys_core.training import HybridTrainer

    ratings, items = data
    search = HybridTrainer(ratings, items, None, TrainConfig(epochs=10, rating_prior_dim=0, **TINY))
    refit = HybridTrainer(ratings, items, None, TrainConfig(epochs=3, schedule_epochs=10, rating_prior_dim=0, **TINY))
    short = HybridTrainer(ratings, items, None, TrainConfig(epochs=3, rating_prior_dim=0, **TINY))
    rates = {name: [] for name in ("search", "refit", "short")}
    for _ in range(3):
        for name, trainer in (("search", search), ("refit", refit), ("short", short)):
            trainer.train_epoch()
            rates[name].append(trainer.optimizer.param_groups[0]["lr"])
    assert rates["refit"] == rates["search"] and rates["short"][-1] < rates["search"][-1]
    with pytest.raises(ValueError, match="schedule_epochs"):
        TrainConfig(schedule_epochs=-1)
