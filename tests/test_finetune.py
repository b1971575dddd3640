"""The text-encoder fine-tune on a tiny BERT written by the test: it changes the vectors, is deterministic for a seed,
is cached (no retraining, no re-encoding), is logged to MLflow, and trains exactly what the encoder later runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.bench import coldstart
from recsys_core.bench.coldstart import ridge_factors, split_items
from recsys_core.finetune import FineTuneConfig, FineTunedTextEncoder, fine_tune_cached
from recsys_core.finetune.train import _frozen_hidden, _pad, _TopLayers
from recsys_core.text_features import TextEncoder, encode_items, item_text, load_mean_pooled_encoder
from recsys_core.tracking import MlflowSettings
from tests.test_text_features import make_items, write_tiny_bert

TINY = FineTuneConfig(layers=1, epochs=1, batch_size=8, als_dim=4, lr=1e-2)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def make_ratings(items: pd.DataFrame, n_users: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = [(user, item) for user in range(n_users) for item in items["item_id"] if rng.random() < 0.5]
    return pd.DataFrame({
        "user_id": np.array([u for u, _ in pairs], np.int64), "item_id": np.array([i for _, i in pairs], np.int64),
        "rating": rng.integers(1, 6, len(pairs)).astype(np.float32), "timestamp": np.arange(len(pairs), dtype=np.int64),
    })  # fmt: skip


def test_fine_tune_changes_vectors_is_deterministic_and_cached(tiny_bert: Path, tmp_path: Path) -> None:
    items = make_items(12)
    train = make_ratings(items)
    base = TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path / "a")
    frozen = encode_items(items, base)

    first = fine_tune_cached(items, train, base, TINY, tmp_path / "a", MlflowSettings())
    assert first.trained and len(first.losses) == 1 and first.adapter_path.suffix == ".safetensors"
    tuned = encode_items(items, FineTunedTextEncoder.from_base(base, first.adapter_path))
    assert tuned.n_encoded == len(items) and tuned.model_id != frozen.model_id
    assert np.allclose(np.linalg.norm(tuned.vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(tuned.vectors, frozen.vectors, atol=1e-4)

    run = mlflow.MlflowClient(MlflowSettings().resolved_tracking_uri()).get_run(first.mlflow_run_id)
    assert run.data.params["layers"] == "1" and "finetune_loss" in run.data.metrics
    assert mlflow.artifacts.download_artifacts(run_id=first.mlflow_run_id, artifact_path="adapter/adapter.safetensors")

    elsewhere = fine_tune_cached(items, train, base, TINY, tmp_path / "b")
    assert elsewhere.trained and elsewhere.fingerprint == first.fingerprint  # same seed, bit-identical adapter

    again = fine_tune_cached(items, train, base, TINY, tmp_path / "a")
    assert not again.trained and again.fingerprint == first.fingerprint and again.losses == first.losses
    reused = encode_items(items, FineTunedTextEncoder.from_base(base, again.adapter_path))
    assert reused.n_encoded == 0 and np.array_equal(reused.vectors, tuned.vectors)

    reseeded = fine_tune_cached(items, train, base, FineTuneConfig(**{**TINY.to_dict(), "seed": 7}), tmp_path / "a")
    assert reseeded.trained and reseeded.fingerprint != first.fingerprint
    assert encode_items(items, FineTunedTextEncoder.from_base(base, reseeded.adapter_path)).n_encoded == len(items)


def test_new_training_ratings_retrain(tiny_bert: Path, tmp_path: Path) -> None:
    items = make_items(10)
    base = TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path)
    first = fine_tune_cached(items, make_ratings(items, seed=0), base, TINY, tmp_path)
    second = fine_tune_cached(items, make_ratings(items, seed=1), base, TINY, tmp_path)
    assert second.trained and second.key != first.key


def test_trained_layers_compute_what_the_encoder_runs(tiny_bert: Path) -> None:
    """Training runs the top layers on cached hidden states; that must equal the full forward pass of the encoder."""
    base = TextEncoder.load(str(tiny_bert), "cpu")
    texts = item_text(make_items(9)).tolist()
    bert = load_mean_pooled_encoder(tiny_bert).bert
    top = _TopLayers(bert, 1, 4)
    batch, mask = _pad(_frozen_hidden(bert, base.tokenizer, texts, top.first, 64), 0.0)
    with torch.no_grad():
        vectors, _ = top(batch, mask)
    np.testing.assert_allclose(vectors.numpy(), base.encode(texts), atol=1e-5)


def test_adapter_for_another_model_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    items = make_items(10)
    other = TextEncoder.load(str(write_tiny_bert(tmp_path / "other", seed=1)), "cpu", cache_dir=tmp_path)
    result = fine_tune_cached(items, make_ratings(items), other, TINY, tmp_path)
    shallow = write_tiny_bert(tmp_path / "wide", seed=2)
    config = (shallow / "config.json").read_text()
    (shallow / "config.json").write_text(config.replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
    base = TextEncoder.load(str(shallow), "cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="does not fit the base model"):
        FineTunedTextEncoder.from_base(base, result.adapter_path).encode(["x"])


def test_cold_item_split_is_seeded_and_disjoint() -> None:
    ratings = pd.DataFrame({"item_id": np.repeat(np.arange(100), 2), "user_id": np.tile([1, 2], 100)})
    validation, test = split_items(ratings, 0.1, seed=3)
    assert len(validation) == len(test) == 10 and not set(validation) & set(test)
    assert np.array_equal(split_items(ratings, 0.1, seed=3)[1], test)
    assert not np.array_equal(split_items(ratings, 0.1, seed=4)[1], test)
    with pytest.raises(ValueError, match="no cold or no warm"):
        split_items(ratings, 0.5, seed=3)


def test_ridge_factors_recovers_a_linear_map() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    factors = vectors @ np.array([[2.0], [-1.0]]) + 3.0  # f = 2 x - y + 3
    predicted = ridge_factors(vectors, np.array([0, 1, 2]), factors[:3], lam=0.0)
    np.testing.assert_allclose(predicted.ravel(), [5.0, 2.0, 4.0, 6.0], atol=1e-9)


def write_movielens(folder: Path, n_items: int = 40, n_users: int = 30, seed: int = 0) -> Path:
    """A tiny ml-100k folder (u.data, u.item) with words the tiny BERT knows in the titles."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t{881250949 + u * 1000 + i}" for u in range(1, n_users + 1)
             for i in range(1, n_items + 1) if rng.random() < 0.4]  # fmt: skip
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    titles = make_items(n_items)["title"]
    rows = []
    for i in range(1, n_items + 1):
        genre_flags = "|".join("1" if genre == i % 19 else "0" for genre in range(19))
        rows.append(f"{i}|{titles[i - 1]} (199{i % 10})|01-Jan-199{i % 10}||http://x|{genre_flags}")
    (folder / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    return folder


def test_coldstart_bench_averages_seeds_and_reuses_the_fine_tunes(tiny_bert: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    coldstart.add_arguments(parser)
    data = write_movielens(tmp_path / "ml")
    argv = ["--data-dir", str(data), "--model", str(tiny_bert), "--seeds", "1,2", "--quick", "--cache-dir",
            str(tmp_path / "cache")]  # fmt: skip
    assert coldstart.run(parser.parse_args([*argv, "--json", str(tmp_path / "first.json")])) == 0
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["seeds"] == [1, 2] and len(first["ratio_per_seed"]) == 2
    methods = {row["method"]: row for row in first["rows"]}
    assert set(methods) == {coldstart.FROZEN, coldstart.TUNED, coldstart.KNN_FROZEN, coldstart.KNN_TUNED}
    tuned = methods[coldstart.TUNED]
    per_seed = [float(value) for value in tuned["test_per_seed"].split()]
    assert tuned["test_ndcg@10"] == pytest.approx(np.mean(per_seed), abs=1e-3)
    assert tuned["test_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-3)
    ratio = first["goals"][next(name for name in first["goals"] if name.startswith("fine-tuned"))]
    assert ratio["passed"] == (ratio["value"] >= coldstart.GOAL_RATIO)
    assert all(not row["from_cache"] for row in first["all_rows"] if "from_cache" in row)

    assert coldstart.run(parser.parse_args([*argv, "--json", str(tmp_path / "again.json")])) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert all(row["from_cache"] for row in again["all_rows"] if "from_cache" in row)
    assert again["rows"] == first["rows"]
