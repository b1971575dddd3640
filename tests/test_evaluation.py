"""Evaluation of a small trained model: ONNX and PyTorch lists agree, slices and baselines, the `offline_metrics` asset."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize

from recsys_core import evaluation as ev
from recsys_core import metrics as m
from recsys_core.export import export_onnx
from recsys_core.serving.scorer import OnnxScorer
from recsys_core.split import temporal_split
from recsys_core.synthetic import generate_synthetic
from recsys_core.text_features import ItemTextFeatures
from recsys_core.tracking import MlflowSettings
from recsys_core.training import TrainConfig, train_hybrid
from recsys_dagster.assets.evaluation import offline_metrics
from recsys_dagster.resources.tracking import MlflowResource


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model on a temporal split (so the test has cold users and cold-start items), saved and exported."""
    root = tmp_path_factory.mktemp("evaluation")
    ratings, items = generate_synthetic(n_users=160, n_items=120, n_ratings=4000, seed=5)
    split = temporal_split(ratings, 0.1, 0.2, seed=42)
    config = TrainConfig(dim=16, n_heads=2, history_len=20, epochs=4, show_progress=False, seed=3)
    result = train_hybrid(split.train, split.validation, items, None, config)
    result.bundle.save(root / "model")
    export_onnx(root / "model", root / "onnx", items)
    return {"split": split, "items": items, "bundle": result.bundle, "model_dir": root / "model", "onnx_dir": root / "onnx"}


def test_onnx_and_pytorch_rank_the_same_lists(trained):
    split, bundle = trained["split"], trained["bundle"]
    users = np.concatenate([split.test["user_id"].unique(), [999_999]])  # plus a user the model never saw
    onnx = ev.OnnxRecommender(OnnxScorer.from_dir(trained["onnx_dir"], providers="cpu"), batch_size=37)
    torch_recs = ev.model_recommender(bundle)(users, 10)
    onnx_recs = onnx(users, 10)
    assert len(onnx_recs) == len(torch_recs) == 10 * len(users)
    merged = onnx_recs.merge(torch_recs, on=["user_id", "rank"], suffixes=("_onnx", "_torch"))
    assert (merged["item_id_onnx"] == merged["item_id_torch"]).mean() > 0.99
    np.testing.assert_allclose(merged["score_onnx"], merged["score_torch"], rtol=1e-4, atol=1e-4)
    # training items never come back; candidates restrict the catalogue
    seen = split.train.merge(onnx_recs, on=["user_id", "item_id"])
    assert seen.empty
    candidates = trained["items"]["item_id"].to_numpy()[:7]
    restricted = onnx(users[:5], 10, candidates=candidates)
    assert set(restricted["item_id"]) <= set(candidates)


def test_evaluate_reports_slices_baselines_and_rating_error(trained):
    split, items, bundle = trained["split"], trained["items"], trained["bundle"]
    baselines = ev.fit_baselines(split.train, items, seed=1)
    result = ev.evaluate(ev.model_recommender(bundle), split.train, split.test, items, rating_model=bundle,
                         baselines=baselines, source="model")  # fmt: skip
    assert result.metrics["ndcg@10"] == pytest.approx(m.ranking_metrics(result.recs, split.test, 10)["ndcg@10"])
    assert list(result.models.index) == ["model", "most_popular", "biased_mf", "implicit_als", "ease", "rp3beta", "als", "bpr"]
    assert {"catalog_coverage", "novelty", "gini_exposure", "rmse"} <= set(result.models.columns)
    assert np.isnan(result.models.loc["implicit_als", "rmse"])  # ALS scores are not ratings
    assert 0 < result.extra["rmse"] < 2
    kinds = set(result.slices["slice"])
    assert {"all", "user activity", "genre", "cold-start items"} <= kinds
    activity = result.slices[result.slices["slice"] == "user activity"]
    assert activity["n_users"].sum() == result.n_test_users
    cold_items = result.slices[result.slices["slice"] == "cold-start items"].iloc[0]
    assert cold_items["n_users"] > 0 and cold_items["hr@10"] > 0
    assert "slice/user activity/cold/ndcg@10" in result.metrics or activity.set_index("name").loc["cold", "n_users"] == 0


def test_evaluate_with_text_vectors_adds_diversity(trained):
    split, items, bundle = trained["split"], trained["items"], trained["bundle"]
    vectors = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    result = ev.evaluate(ev.model_recommender(bundle), split.train, split.test, items,
                         text_item_ids=items["item_id"].to_numpy(), text_vectors=vectors)  # fmt: skip
    assert 0.5 < result.metrics["intra_list_diversity"] < 1.5  # random directions: cosine ~ 0
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate(ev.model_recommender(bundle), split.train, split.test.iloc[:0], items)


def test_offline_metrics_asset_logs_to_the_training_run(trained, tmp_path: Path):
    split, items = trained["split"], trained["items"]
    settings = MlflowSettings()
    experiment_id = settings.activate()
    with mlflow.start_run(experiment_id=experiment_id, run_name="training") as run:
        run_id = run.info.run_id
    features = ItemTextFeatures(items["item_id"].to_numpy(np.int64),
                                np.random.default_rng(1).normal(size=(len(items), 8)).astype(np.float32), len(items), 0,
                                "test-encoder", "fp")  # fmt: skip
    features_path = features.save(tmp_path / "text.npz")
    upstream = {
        "trained_model": {"model_dir": str(trained["model_dir"]), "run_id": run_id, "run_url": settings.run_url(experiment_id, run_id)},
        "onnx_model": {"onnx_dir": str(trained["onnx_dir"])},
        "item_text_features": {"path": str(features_path)},
        "train_ratings": split.train,
        "test_ratings": split.test,
        "validated_items": items,
    }

    def stub(name: str, value):
        @asset(name=name)
        def _stub():
            return value

        return _stub

    result = materialize(
        [*(stub(name, value) for name, value in upstream.items()), offline_metrics],
        resources={"mlflow": MlflowResource()},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    value = result.asset_value(AssetKey("offline_metrics"))
    assert value["source"] == "onnx" and value["run_id"] == run_id
    logged = settings.client().get_run(run_id).data.metrics
    assert logged["eval/ndcg_at_10"] == pytest.approx(value["metrics"]["ndcg@10"])
    assert "eval/rmse" in logged and "eval/intra_list_diversity" in logged
    assert any(key.startswith("eval/slice/genre/") for key in logged)
    assert logged["eval/baseline/most_popular/ndcg_at_10"] == pytest.approx(value["models"]["most_popular"]["ndcg@10"])
    artifacts = {f.path for f in settings.client().list_artifacts(run_id, "evaluation")}
    assert {"evaluation/model_vs_baselines.png", "evaluation/slices.png", "evaluation/slices.csv"} <= artifacts
    metadata = result.asset_materializations_for_node("offline_metrics")[0].metadata
    assert "data:image/png;base64," in metadata["model_vs_baselines"].value
    assert "most_popular" in metadata["metrics"].value
    assert pd.read_parquet(value["per_user_path"]).shape[0] == value["n_test_users"]
