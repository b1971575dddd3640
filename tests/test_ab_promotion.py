"""Acceptance: two models of clearly different quality, trained on synthetic data and exported to ONNX; the A/B
report promotes the better one and holds the worse, in recsys_core and through the `ab_report` asset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize

from recsys_core.experiments import offline, registry
from recsys_core.evaluation import OnnxRecommender
from recsys_core.export import export_onnx, register_onnx_model
from recsys_core.serving.scorer import OnnxScorer
from recsys_core.split import stratified_random_split
from recsys_core.synthetic import generate_synthetic
from recsys_core.tracking import MlflowSettings
from recsys_core.training import TrainConfig, train_hybrid
from recsys_dagster.assets.ab import CHECK, ab_report
from recsys_dagster.resources.tracking import MlflowResource


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model trained for 8 epochs and one trained 1 epoch on shuffled interactions, both exported to ONNX."""
    root = tmp_path_factory.mktemp("ab_models")
    ratings, items = generate_synthetic(n_users=150, n_items=120, n_ratings=5000, seed=3)
    split = stratified_random_split(ratings, 0.1, 0.25, seed=42)
    small = dict(dim=16, n_heads=2, history_len=20, show_progress=False, seed=7)
    good = train_hybrid(split.train, split.validation, items, None, TrainConfig(epochs=8, patience=100, **small))
    shuffled = split.train.assign(item_id=np.random.default_rng(0).permutation(split.train["item_id"].to_numpy()))
    bad = train_hybrid(shuffled, None, items, None, TrainConfig(epochs=1, **small))
    dirs = {}
    for name, result in (("good", good), ("bad", bad)):
        result.bundle.save(root / f"{name}_model")
        export_onnx(root / f"{name}_model", root / f"{name}_onnx", items)
        dirs[name] = str(root / f"{name}_onnx")
    return {"test": split.test, "dirs": dirs}


def _recs(serving_dir: str, test: pd.DataFrame) -> pd.DataFrame:
    return OnnxRecommender(OnnxScorer.from_dir(serving_dir, providers="cpu"))(test["user_id"].unique(), 10)


def test_report_promotes_the_better_model_and_holds_the_worse(two_models):
    test, dirs = two_models["test"], two_models["dirs"]
    good, bad = _recs(dirs["good"], test), _recs(dirs["bad"], test)
    better = offline.build_ab_report(good, test, champion_recs=bad, challenger_label="good", champion_label="bad", n_boot=500)
    worse = offline.build_ab_report(bad, test, champion_recs=good, challenger_label="bad", champion_label="good", n_boot=500)
    assert better.decision.action == offline.PROMOTE, better.decision.reasons
    assert better.comparisons["ndcg@10"].ci_low > 0
    assert better.replay.challenger.ctr > better.replay.champion.ctr
    assert worse.decision.action == offline.HOLD and worse.decision.worse_beyond_tolerance


def _run_ab(manifest: dict, test: pd.DataFrame, instance: DagsterInstance):
    @asset(name="onnx_model")
    def challenger_manifest() -> dict:
        return manifest

    @asset(name="test_ratings")
    def held_out() -> pd.DataFrame:
        return test

    return materialize(
        [challenger_manifest, held_out, ab_report],
        resources={"mlflow": MlflowResource()},
        instance=instance,
        run_config={"ops": {"ab_report": {"config": {"n_boot": 300}}}},
        raise_on_error=False,
    )


def _check_passed(result) -> bool:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK]
    return evaluation.passed


def test_ab_report_asset_moves_champion_only_for_a_better_model(two_models, recsys_home: Path):
    test, dirs = two_models["test"], two_models["dirs"]
    settings = MlflowSettings()
    versions = {name: register_onnx_model(settings, dirs[name]) for name in ("bad", "good")}
    manifests = {name: {**v, "onnx_dir": dirs[name]} for name, v in versions.items()}
    client, model_name = settings.client(), versions["bad"]["registered_model_name"]
    instance = DagsterInstance.ephemeral()

    first = _run_ab(manifests["bad"], test, instance)
    assert first.success and _check_passed(first)
    value = first.asset_value(AssetKey("ab_report"))
    assert value["decision"]["action"] == "promote" and value["champion"] is None
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == versions["bad"]["version"]
    page = Path(value["report_html"]).read_text()
    assert "first model" in page

    second = _run_ab(manifests["good"], test, instance)
    assert second.success and _check_passed(second)
    assert second.asset_value(AssetKey("ab_report"))["promoted"] is True
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == versions["good"]["version"]

    third = _run_ab(manifests["bad"], test, instance)
    assert not _check_passed(third)
    held = third.asset_value(AssetKey("ab_report"))
    assert held["decision"]["action"] == "hold" and held["promoted"] is False
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == versions["good"]["version"]
    tags = client.get_model_version(model_name, versions["bad"]["version"]).tags
    assert tags["recsys.ab_decision"] == "hold"
    artifacts = [f.path for f in client.list_artifacts(held["run_id"], "ab_report")]
    assert "ab_report/ab_report.html" in artifacts


def test_champion_serving_dir_falls_back_to_registry_artefacts(two_models, tmp_path: Path):
    import shutil

    copy = tmp_path / "exported"
    shutil.copytree(two_models["dirs"]["good"], copy)
    settings = MlflowSettings()
    registered = register_onnx_model(settings, copy)
    name, version = registered["registered_model_name"], registered["version"]
    assert registry.serving_dir_of(settings, name, version) == str(copy)
    shutil.rmtree(copy)  # the export folder is gone: the registered extra files serve instead
    fallback = registry.serving_dir_of(settings, name, version)
    assert (Path(fallback) / "user_encoder.onnx").exists()
    OnnxScorer.from_dir(fallback, providers="cpu").validate()
    assert registry.current_champion(settings, name) is None
