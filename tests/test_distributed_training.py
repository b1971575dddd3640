"""Data-parallel training: `trained_model` under `torchrun --nproc_per_node 2` (gloo on CPU) against one process."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from dagster import AssetKey, DagsterInstance, asset, materialize

from recsys_core.distributed import all_reduce_mean, shard_epoch, wrap_ddp
from recsys_core.model import ModelBundle
from recsys_core.split import stratified_random_split
from recsys_core.synthetic import generate_synthetic
from recsys_core.text_features import ItemTextFeatures
from recsys_dagster.assets.training import trained_model
from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.resources.tracking import MlflowResource

# Two ranks see each global batch in two halves and average gradients, which is the one-process step up to float
# summation order and the per-rank history/target draws; over a few epochs nDCG@10 stays this close.
NDCG_TOLERANCE = 0.03
TRAINING = {"epochs": 6, "dim": 16, "history_len": 32, "batch_size": 32, "prior_dim": 8, "rating_prior_dim": 8, "patience": 6}


def test_hooks_are_the_identity_without_a_process_group() -> None:
    order = torch.arange(10)
    assert shard_epoch(order, 32) == (order, 32)
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model) is model
    assert np.array_equal(all_reduce_mean(np.array([1.0, 2.0])), [1.0, 2.0])


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    order, batch_size = shard_epoch(torch.arange(5), 4)
    torch.manual_seed(0)
    model = wrap_ddp(torch.nn.Linear(3, 1))
    model(torch.full((2, 3), float(rank + 1))).sum().backward()  # different data per rank, averaged gradients
    grad = next(model.parameters()).grad
    mean = all_reduce_mean(np.array([float(rank), 10.0]))
    torch.save({"order": order, "batch_size": batch_size, "ddp": type(model).__name__, "grad": grad, "mean": mean},
               f"{out_dir}/{rank}.pt")  # fmt: skip
    torch.distributed.destroy_process_group()


def test_hooks_shard_and_average_across_two_gloo_ranks(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    first, second = (torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in (0, 1))
    assert first["order"].tolist() == [0, 2, 4] and second["order"].tolist() == [1, 3, 0]  # padded: equal step counts
    assert first["batch_size"] == second["batch_size"] == 2  # half the global batch each
    assert first["ddp"] == "DistributedDataParallel"
    assert torch.equal(first["grad"], second["grad"]) and torch.allclose(first["grad"], torch.full((1, 3), 3.0))
    assert np.allclose(first["mean"], [0.5, 10.0]) and np.allclose(second["mean"], [0.5, 10.0])


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ratings, items = generate_synthetic(n_users=150, n_items=120, n_ratings=4000, seed=3)
    split = stratified_random_split(ratings, 0.15, 0.1, seed=0)
    ids = np.sort(items["item_id"].to_numpy(np.int64))
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    features = ItemTextFeatures(ids, vectors, n_encoded=len(ids), n_reused=0, model_id="random", fingerprint="f" * 16)
    path = features.save(tmp_path_factory.mktemp("text") / "features.npz")
    return {"train_ratings": split.train, "validation_ratings": split.validation, "validated_items": items,
            "item_text_features": {"path": str(path)},
            "tuned_config": {"params": {}, "run_id": None, "dagster_run_id": None}}  # fmt: skip (tuned_config with no search)


def source(name: str, value: object):
    """An upstream asset of `trained_model` that returns a fixed value."""

    @asset(name=name)
    def fixed():
        return value

    return fixed


def train(sources: dict, tmp_path: Path, nproc_per_node: int) -> tuple[dict, dict, str]:
    """Materialises `trained_model` from the fixed sources; returns its manifest, metadata and MLflow tracking URI."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [*(source(name, value) for name, value in sources.items()), trained_model],
            resources={"io_manager": RecsysIOManager(base_dir=str(tmp_path / f"assets{nproc_per_node}")),
                       "mlflow": MlflowResource(tracking_uri=tracking_uri, experiment_name="ddp"),
                       "compute": ComputeResource(device="cpu")},
            run_config={"ops": {"trained_model": {"config": {**TRAINING, "nproc_per_node": nproc_per_node}}}},
            instance=instance,
        )  # fmt: skip
        assert result.success
        metadata = instance.get_latest_materialization_event(AssetKey("trained_model")).asset_materialization.metadata
    return result.output_for_node("trained_model"), metadata, tracking_uri


@pytest.mark.slow
def test_torchrun_two_ranks_reach_the_single_process_ndcg(sources: dict, tmp_path: Path) -> None:
    single, _, _ = train(sources, tmp_path, 1)
    ddp, metadata, tracking_uri = train(sources, tmp_path, 2)
    assert abs(ddp["metrics"]["val_ndcg@10"] - single["metrics"]["val_ndcg@10"]) <= NDCG_TOLERANCE, (single["metrics"], ddp["metrics"])
    assert ddp["metrics"]["val_ndcg@10"] > 0.0
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(ddp["run_id"])
    assert run.data.params["world_size"] == "2"
    assert client.get_run(single["run_id"]).data.params["world_size"] == "1"
    assert [m.step for m in client.get_metric_history(ddp["run_id"], "val_ndcg_at_10")] == list(range(1, metadata["epochs_run"].value + 1))
    assert metadata["world_size"].value == 2
    assert ModelBundle.load(ddp["model_dir"]).model.n_parameters() == metadata["n_parameters"].value
    artifacts = {a.path for a in client.list_artifacts(ddp["run_id"], "model")}
    assert "model/model.safetensors" in artifacts
