"""`item_text_features` through real Dagster materialisation: manifest, metadata, check, and incremental re-runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, RunConfig, asset, materialize

from recsys_core.text_features import load_item_text_features
from recsys_dagster.assets.features import TextFeaturesConfig, item_text_features, vectors_cover_items_and_are_unit
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.resources.text_encoder import TextEncoderResource
from recsys_dagster.resources.tracking import MlflowResource
from tests.test_finetune import make_ratings
from tests.test_text_features import make_items, write_tiny_bert

CATALOGUE: dict[str, pd.DataFrame] = {}


@asset
def validated_items() -> pd.DataFrame:
    """Stands in for the validation stage: serves whatever catalogue the test put in CATALOGUE."""
    return CATALOGUE["items"]


@asset
def train_ratings() -> pd.DataFrame:
    """Stands in for the split stage: ratings of the catalogue the test put in CATALOGUE."""
    return make_ratings(CATALOGUE["items"])


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def materialise(
    items: pd.DataFrame, tmp_path: Path, model: str, instance: DagsterInstance, config: TextFeaturesConfig | None = None
):
    CATALOGUE["items"] = items
    return materialize(
        [validated_items, train_ratings, item_text_features, vectors_cover_items_and_are_unit],
        resources={
            "io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")),
            "text_encoder": TextEncoderResource(model=model, device="cpu", cache_dir=str(tmp_path / "cache")),
            "mlflow": MlflowResource(),
        },
        run_config=RunConfig({"item_text_features": config or TextFeaturesConfig()}),
        instance=instance,
    )


def test_asset_writes_aligned_vectors_and_rematerialises_incrementally(tiny_bert: Path, tmp_path: Path, recsys_home: Path) -> None:
    items = make_items(100)
    with DagsterInstance.ephemeral() as instance:
        first = materialise(items, tmp_path, str(tiny_bert), instance)
        assert first.success
        manifest = first.output_for_node("item_text_features")
        assert manifest["n_items"] == 100 and manifest["dim"] == 32 and manifest["n_encoded"] == 100
        assert Path(manifest["path"]).is_relative_to(recsys_home / "artifacts" / "item_text_features")
        features = load_item_text_features(manifest["path"])
        assert np.array_equal(features.item_ids, np.sort(items["item_id"].to_numpy()))
        assert features.fingerprint == manifest["fingerprint"]
        assert Path(manifest["projection_png"]).stat().st_size > 1000
        assert all(check.passed for check in first.get_asset_check_evaluations())

        metadata = instance.get_latest_materialization_event(AssetKey("item_text_features")).asset_materialization.metadata
        assert metadata["projection"].value.startswith("![") and "data:image/png;base64," in metadata["projection"].value
        assert metadata["items_encoded"].value == 100 and metadata["items_reused"].value == 0
        assert metadata["items_per_second"].value > 0 and metadata["dim"].value == 32
        assert "neighbour" in metadata["nearest_neighbours"].value

        changed = items.copy()
        changed.loc[changed.index[0], "title"] = "a changed title"
        second = materialise(changed, tmp_path, str(tiny_bert), instance)
        again = second.output_for_node("item_text_features")
        assert (again["n_encoded"], again["n_reused"]) == (1, 99)
        assert again["fingerprint"] != manifest["fingerprint"]


def test_fine_tune_option_trains_once_and_caches(tiny_bert: Path, tmp_path: Path) -> None:
    items = make_items(12)
    config = TextFeaturesConfig(fine_tune=True, fine_tune_layers=1, fine_tune_epochs=1)
    with DagsterInstance.ephemeral() as instance:
        frozen = materialise(items, tmp_path, str(tiny_bert), instance).output_for_node("item_text_features")
        first = materialise(items, tmp_path, str(tiny_bert), instance, config)
        assert first.success and all(check.passed for check in first.get_asset_check_evaluations())
        tuned = first.output_for_node("item_text_features")
        assert tuned["fine_tune_fingerprint"] and tuned["n_encoded"] == 12 and tuned["model_id"] != frozen["model_id"]
        metadata = instance.get_latest_materialization_event(AssetKey("item_text_features")).asset_materialization.metadata
        assert metadata["fine_tune_trained_now"].value is True and "#/experiments/" in metadata["fine_tune_mlflow_run"].value
        assert not np.allclose(load_item_text_features(tuned["path"]).vectors, load_item_text_features(frozen["path"]).vectors)

        again = materialise(items, tmp_path, str(tiny_bert), instance, config).output_for_node("item_text_features")
        metadata = instance.get_latest_materialization_event(AssetKey("item_text_features")).asset_materialization.metadata
        assert metadata["fine_tune_trained_now"].value is False
        assert (again["n_encoded"], again["fingerprint"]) == (0, tuned["fingerprint"])
