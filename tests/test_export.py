"""ONNX export: the top-k graph, provider choice, parity with PyTorch, int8, corrupt models, registry and the asset."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize

from recsys_core.bench.serving import build_random_bundle, random_ratings
from recsys_core.export import (
    check_parity,
    compare_rankings,
    export_onnx,
    lists_agree,
    quantize_onnx_dir,
    register_onnx_model,
)
from recsys_core.model import ModelBundle
from recsys_core.serving import providers
from recsys_core.serving.graphs import build_int8_topk_graph, build_topk_graph
from recsys_core.serving.reload import ModelHolder, RegistrySource, Reloader, load_scorer_from_registry, load_validated
from recsys_core.serving.scorer import History, ModelLoadError, OnnxScorer
from recsys_core.text_features import ItemTextFeatures
from recsys_core.tracking import MlflowSettings
from recsys_core.training import TrainConfig, train_hybrid
from recsys_dagster.assets.export import index_recall, onnx_model, onnx_parity
from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.resources.tracking import MlflowResource

N_USERS, N_ITEMS = 40, 60


def make_model(directory: Path, seed: int = 0) -> Path:
    ratings = random_ratings(N_USERS, N_ITEMS, per_user=12, seed=seed)
    ratings["item_id"] *= 10  # source ids that are not indices
    return build_random_bundle(directory, ratings, np.arange(1, N_ITEMS + 1) * 10, dim=16, history_len=8, seed=seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("export")
    model_dir = make_model(root / "model")
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1) * 10, "title": [f"Movie {i}" for i in range(N_ITEMS)]})
    export_onnx(model_dir, root / "fp32", items)
    quantize_onnx_dir(root / "fp32", root / "int8")
    return model_dir, root / "fp32", root / "int8"


def test_topk_graph_dynamic_batch_and_catalogue() -> None:
    session = ort.InferenceSession(build_topk_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, n_items in ((1, 7), (5, 300)):
        users = rng.standard_normal((batch, 4)).astype(np.float32)
        matrix = rng.standard_normal((n_items, 4)).astype(np.float32)
        exclude = rng.random((batch, n_items)) < 0.3
        feeds = {"user_vec": users, "exclude_mask": exclude, "k": np.array([3]), "item_matrix": matrix}
        scores, idx = session.run(None, feeds)
        expected = np.where(exclude, -np.inf, users @ matrix.T)
        assert idx.shape == (batch, 3) and idx.dtype == np.int64
        np.testing.assert_array_equal(idx, np.argsort(-expected, axis=1, kind="stable")[:, :3])
        np.testing.assert_allclose(scores, np.take_along_axis(expected, idx, axis=1), rtol=1e-5)
        assert not exclude[np.arange(batch)[:, None], idx].any()


def test_int8_topk_graph_ranks_like_fp32() -> None:
    rng = np.random.default_rng(1)
    users = rng.standard_normal((4, 8)).astype(np.float32)
    matrix = rng.standard_normal((500, 8)).astype(np.float32)
    exclude = np.zeros((4, 500), dtype=bool)
    exclude[:, :10] = True
    session = ort.InferenceSession(build_int8_topk_graph(matrix).SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["user_vec", "exclude_mask", "k"]
    scores, idx = session.run(None, {"user_vec": users, "exclude_mask": exclude, "k": np.array([10])})
    exact = np.where(exclude, -np.inf, users @ matrix.T)
    best = np.argsort(-exact, axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.tolist(), best.tolist())])
    assert overlap >= 0.8 and (idx >= 10).all()
    np.testing.assert_allclose(scores, np.take_along_axis(exact, idx, axis=1), atol=0.1 * np.abs(exact).max())


def test_provider_choice_is_quiet_and_honest(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    chosen = providers.choose_providers("auto")
    assert chosen[-1] == providers.CPU
    assert capfd.readouterr().err == ""  # never ORT's loud CUDA failure
    monkeypatch.setattr(providers, "cuda_usable", lambda: False)
    assert providers.choose_providers("auto") == [providers.CPU]
    with pytest.raises(RuntimeError, match="CUDA"):
        providers.choose_providers("cuda")
    with pytest.raises(ValueError, match="expected"):
        providers.choose_providers("tpu")


def test_lists_agree_accepts_ties_only() -> None:
    scores = np.array([5.0, 4.0, 3.0, 3.0, 1.0])
    assert lists_agree(np.array([0, 1, 3]), np.array([0, 1, 2]), scores, 1e-6)  # 2 and 3 tie at the boundary
    assert not lists_agree(np.array([0, 1, 4]), np.array([0, 1, 2]), scores, 1e-6)
    assert not lists_agree(np.array([1, 0, 2]), np.array([0, 1, 2]), scores, 1e-6)


def test_parity_dynamic_batch_and_scorer(exported: tuple[Path, Path, Path]) -> None:
    model_dir, fp32, _ = exported
    bundle = ModelBundle.load(model_dir)
    scorer = OnnxScorer.from_dir(fp32, providers="cpu")
    report = check_parity(bundle, scorer, n_users=20, rtol=1e-4, atol=1e-4)
    assert report.passed, report.as_dict()
    assert report.max_abs_diff_user_vec < 1e-4 and report.n_users == 40
    for batch in (1, 7):
        rows = np.arange(batch)
        history = History(scorer.histories.items[rows], scorer.histories.ratings[rows], scorer.histories.mask[rows])
        assert scorer.user_vectors(rows, history).shape == (batch, bundle.config.output_dim)
    known, unknown = scorer.recommend([int(bundle.user_index.ids[0]), 999_999], k=5)
    assert known.source == "model" and len(known.item_ids) == 5
    assert not set(known.item_ids) & set(bundle.item_index.decode(bundle.seen_items(0)).tolist())
    assert all(reason in bundle.item_index.ids for reason in known.reasons)
    assert unknown.source == "popularity" and unknown.reasons == [None] * 5
    fresh = scorer.recommend_from_history([10, 20], [5.0, 4.0], k=4)
    assert fresh.source == "history" and not {10, 20} & set(fresh.item_ids) and set(fresh.reasons) <= {10, 20}
    similar, scores = scorer.similar_items(10, k=3)
    assert 10 not in similar and scores == sorted(scores, reverse=True) and max(scores) <= 1.0 + 1e-5
    assert scorer.title(10) == "Movie 0"
    with pytest.raises(KeyError):
        scorer.recommend_from_history([11], k=3)


@pytest.mark.parametrize("encoder_layers", [0, 1])
def test_parity_of_a_trained_model_with_als_prior_and_text(tmp_path: Path, encoder_layers: int) -> None:
    ratings = random_ratings(N_USERS, N_ITEMS, per_user=12, seed=3)
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": [f"Movie {i}" for i in range(N_ITEMS)]})
    vectors = np.random.default_rng(0).normal(size=(N_ITEMS, 6)).astype(np.float32)
    text = ItemTextFeatures(items["item_id"].to_numpy(), vectors, N_ITEMS, 0, "random", "f" * 16)
    config = TrainConfig(
        epochs=1, dim=8, n_heads=2, history_len=8, prior_dim=4, rating_prior_dim=4, encoder_layers=encoder_layers,
        show_progress=False, device="cpu",
    )
    bundle = train_hybrid(ratings, None, items, text, config).bundle
    assert bundle.config.output_dim == 8 + 4 + 1 and bundle.model.items.prior.abs().sum() > 0
    export_onnx(bundle.save(tmp_path / "model"), tmp_path / "fp32", items)
    report = check_parity(ModelBundle.load(tmp_path / "model"), OnnxScorer.from_dir(tmp_path / "fp32", providers="cpu"))
    assert report.passed, report.as_dict()


def test_int8_is_smaller_and_close(exported: tuple[Path, Path, Path]) -> None:
    _, fp32, int8 = exported
    assert (int8 / "user_encoder.onnx").stat().st_size < (fp32 / "user_encoder.onnx").stat().st_size
    ops = {node.op_type for node in __import__("onnx").load(str(int8 / "user_encoder.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear"}
    int8_scorer = OnnxScorer.from_dir(int8)
    assert [i.name for i in int8_scorer.topk_session.get_inputs()] == ["user_vec", "exclude_mask", "k"]
    assert int8_scorer.similar_items(10, k=3)[0] == OnnxScorer.from_dir(fp32).similar_items(10, k=3)[0]
    drift = compare_rankings(OnnxScorer.from_dir(fp32), OnnxScorer.from_dir(int8), n_users=30, k=5)
    assert drift["overlap@5"] >= 0.5 and drift["ndcg@5_vs_reference"] >= 0.5


def test_corrupt_or_inconsistent_model_is_refused(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, fp32, _ = exported
    corrupt = shutil.copytree(fp32, tmp_path / "corrupt")
    (corrupt / "user_encoder.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxScorer.from_dir(corrupt)
    mismatched = shutil.copytree(fp32, tmp_path / "mismatched")
    np.save(mismatched / "item_matrix.npy", np.zeros((N_ITEMS + 3, 17), np.float32))
    with pytest.raises(ModelLoadError, match="item_matrix rows"):
        OnnxScorer.from_dir(mismatched)
    truncated = shutil.copytree(fp32, tmp_path / "truncated")
    (truncated / "histories.npz").write_bytes(b"PK")
    with pytest.raises(ModelLoadError, match="unreadable"):
        OnnxScorer.from_dir(truncated)
    missing = shutil.copytree(fp32, tmp_path / "missing")
    (missing / "seen.npz").unlink()
    with pytest.raises(ModelLoadError, match="seen.npz"):
        OnnxScorer.from_dir(missing)


@pytest.mark.slow
def test_onnx_model_asset_registers_challenger_and_reloads_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    model_dir = make_model(tmp_path / "model")
    settings = MlflowSettings(experiment_name="export-test")
    settings.activate()
    import mlflow

    with mlflow.start_run(run_name="training") as training_run:
        mlflow.log_param("kind", "test")

    @asset(name="trained_model")
    def trained_model() -> dict:
        return {"model_dir": str(model_dir), "run_id": training_run.info.run_id}

    @asset(name="validated_items")
    def validated_items() -> pd.DataFrame:
        return pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1) * 10, "title": [f"Movie {i}" for i in range(N_ITEMS)]})

    resources = {"io_manager": RecsysIOManager(), "mlflow": MlflowResource(experiment_name="export-test"),
                 "compute": ComputeResource(device="cpu")}  # fmt: skip
    result = materialize(
        [trained_model, validated_items, onnx_model, onnx_parity, index_recall],
        resources=resources,
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": {"onnx_model": {"config": {"parity_users": 10, "int8_users": 20, "exact_max_items": 10}}}},
    )
    assert result.success
    value = result.output_for_node("onnx_model")
    assert value["version"] == "1" and value["parity"]["passed"] and value["training_run_id"] == training_run.info.run_id
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks if c.asset_key == AssetKey("onnx_model")] == [True, True]
    assert value["retrieval"]["kind"] == "tiered-ivf-pq4fs" and value["retrieval"]["recall_at_10"] >= 0.95
    client = settings.client()
    assert str(client.get_model_version_by_alias(settings.registered_model_name, "challenger").version) == "1"
    assert not client.get_registered_model(settings.registered_model_name).aliases.get("champion")
    tags = client.get_model_version(settings.registered_model_name, "1").tags
    assert tags["recsys.training_run_id"] == training_run.info.run_id

    # a second model, registered directly; the A/B stream would move champion, here the test does
    second = make_model(tmp_path / "model2", seed=1)
    export_onnx(second, tmp_path / "onnx2")
    registered = register_onnx_model(settings, tmp_path / "onnx2", training_run.info.run_id)
    assert registered["version"] == "2"
    client.set_registered_model_alias(settings.registered_model_name, "champion", "1")
    scorer, version = load_scorer_from_registry(settings, alias="champion", cache_dir=tmp_path / "cache")
    assert version == "1" and scorer.version == "1" and scorer.title(10) == "Movie 0" and scorer.index is not None

    source = RegistrySource(settings, "champion", tmp_path / "cache")
    holder = ModelHolder(load_validated(source, "1", "cpu"))
    reloader = Reloader(holder, source, interval_s=0)
    assert reloader.check_once() == "unchanged"
    client.set_registered_model_alias(settings.registered_model_name, "champion", "2")
    assert reloader.check_once() == "swapped" and holder.current.version == "2"
    manifest = json.loads((holder.current.scorer.directory / "manifest.json").read_text())
    assert manifest["fingerprint"] == registered_fingerprint(tmp_path / "onnx2")


def registered_fingerprint(onnx_dir: Path) -> str:
    return json.loads((onnx_dir / "manifest.json").read_text())["fingerprint"]
