"""Evaluation: the exported model's offline metrics on the test split, slices and baselines, logged to its MLflow run."""


import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from matplotlib import pyplot as plt
from mlflow.entities import Metric
from pydantic import Field

from recsys_core import evaluation as ev
from recsys_core.metrics import ranking_metric_names
from recsys_core.model import ModelBundle
from recsys_core.paths import recsys_home
from recsys_core.serving.scorer import OnnxScorer
from recsys_core.text_features import load_item_text_features
from recsys_dagster.metadata import figure, table
from recsys_dagster.resources.tracking import MlflowResource


class OfflineMetricsConfig(Config):
    k: int = Field(10, description="List length for every ranking metric.")
    use_onnx: bool = Field(True, description="Rank with the exported ONNX graphs (what serving runs); else PyTorch.")
    baselines: bool = Field(True, description="Also evaluate recsys_core.baselines on the same split.")
    cold_user_max: int = Field(5, description="Users with at most this many training ratings form the 'cold' slice.")
    heavy_user_min: int = Field(51, description="Users with at least this many training ratings form the 'heavy' slice.")
    seed: int = Field(42, description="Seed of the baselines' fitting and of the user sample.")
    max_users: int = Field(20_000, description="Test users evaluated: all up to this many, else a seeded uniform sample "
                           "of this many (metrics are then estimates; the metadata gives 95% CIs); 0: all.")
    baseline_fit_ratings: int = Field(ev.MAX_BASELINE_FIT_RATINGS, description="Baselines fit on all training ratings "
                                      "up to this many, else on the evaluated users' ratings plus a seeded sample of "
                                      "other users' up to this many (`baseline_fit_sample`); 0: all.")


def text_vectors(manifest: dict[str, Any] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(item_ids, vectors) from the `item_text_features` manifest, for intra-list diversity."""
    if not manifest or not manifest.get("path"):
        return None, None
    features = load_item_text_features(manifest["path"])
    return features.item_ids.astype(np.int64), features.vectors.astype(np.float32)


def log_to_mlflow(mlflow: MlflowResource, run_id: str, metrics: dict[str, float], files: list[Path]) -> int:
    """Every finite number as `eval/<name>` on the training run, plus the files as artefacts; returns the count."""
    client = mlflow.settings().client()
    now = int(time.time() * 1000)
    batch = [Metric(ev.mlflow_key(f"eval/{name}"), float(value), now, 0) for name, value in metrics.items()
             if value is not None and math.isfinite(value)]  # fmt: skip
    for start in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[start : start + 500])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    return len(batch)


def _jsonable(values: dict[str, float]) -> dict[str, float | None]:
    return {key: (float(v) if v is not None and math.isfinite(v) else None) for key, v in values.items()}


@asset(kinds={"mlflow", "pandas"})
def offline_metrics(
    context: AssetExecutionContext,
    config: OfflineMetricsConfig,
    mlflow: MlflowResource,
    trained_model: dict,
    onnx_model: dict,
    train_ratings: pd.DataFrame,
    test_ratings: pd.DataFrame,
    validated_items: pd.DataFrame,
    item_text_features: dict,
) -> Output[dict]:
    """Ranking, rating and beyond-accuracy metrics of the served model on the test split, by slice and beside the
    baselines; every number is logged to the training run in MLflow."""
    started = time.perf_counter()
    bundle = ModelBundle.load(trained_model["model_dir"])
    if config.use_onnx and onnx_model.get("onnx_dir"):
        recommender: ev.Recommender = ev.OnnxRecommender(OnnxScorer.from_dir(onnx_model["onnx_dir"], providers="auto"))
        source = "onnx"
    else:
        recommender, source = ev.model_recommender(bundle), "pytorch"
    all_users = test_ratings["user_id"].nunique()
    users = ev.sample_users(test_ratings["user_id"].to_numpy(), config.max_users, config.seed)
    test = test_ratings[test_ratings["user_id"].isin(users)] if len(users) < all_users else test_ratings
    fit_started = time.perf_counter()
    fit_on = ev.baseline_fit_sample(train_ratings, users, config.baseline_fit_ratings, config.seed)
    baselines = ev.fit_baselines(fit_on, validated_items, seed=config.seed) if config.baselines else {}
    baselines_fit_seconds = time.perf_counter() - fit_started
    skipped = ev.too_large_baselines(fit_on, validated_items) if config.baselines else []
    item_ids, vectors = text_vectors(item_text_features)
    result = ev.evaluate(
        recommender, train_ratings, test, validated_items, k=config.k, rating_model=bundle, baselines=baselines,
        text_item_ids=item_ids, text_vectors=vectors, source=f"model ({source})",
        slices=ev.SliceConfig(cold_user_max=config.cold_user_max, heavy_user_min=config.heavy_user_min),
    )  # fmt: skip

    out_dir = recsys_home() / "artifacts" / "offline_metrics" / context.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    ranking = ranking_metric_names(config.k)
    comparison = ev.comparison_figure(result.models, ranking)
    slices_plot = ev.slice_figure(result.slices, f"ndcg@{config.k}")
    files = []
    for name, fig in (("model_vs_baselines.png", comparison), ("slices.png", slices_plot)):
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        files.append(out_dir / name)
    result.slices.to_csv(out_dir / "slices.csv", index=False)
    result.models.rename_axis("recommender").to_csv(out_dir / "models.csv")
    per_user_path = out_dir / "per_user_metrics.parquet"
    result.per_user.reset_index().to_parquet(per_user_path, index=False)
    files += [out_dir / "slices.csv", out_dir / "models.csv"]
    baseline_numbers = {f"baseline/{name}/{metric}": float(value) for name, row in result.models.iloc[1:].iterrows()
                        for metric, value in row.items()}  # fmt: skip
    n_logged = log_to_mlflow(mlflow, trained_model["run_id"], {**result.metrics, **baseline_numbers}, files)

    models_table = result.models.rename_axis("recommender").reset_index().round(4)
    metadata = {
        "source": MetadataValue.text(source),
        "test_users": MetadataValue.int(result.n_test_users),
        "test_users_total": MetadataValue.int(all_users),
        "user_sample": MetadataValue.text(f"all {all_users:,} test users" if result.n_test_users == all_users else
                                          f"{result.n_test_users:,} of {all_users:,} test users, uniform, seed {config.seed}"),
        **{f"{name}_ci95": MetadataValue.text(f"{low:.4f} .. {high:.4f}")
           for name, (low, high) in ev.mean_ci(result.per_user[ranking]).items()},
        "baselines_skipped": MetadataValue.text(", ".join(skipped) + " (dense item-item weights: too many items)"
                                                if skipped else "none"),
        "baselines_fit_seconds": MetadataValue.float(round(baselines_fit_seconds, 1)),
        "baselines_fit_ratings": MetadataValue.int(len(fit_on)),
        "baselines_fit_sample": MetadataValue.text(
            f"all {len(train_ratings):,} training ratings" if len(fit_on) == len(train_ratings) else
            f"{len(fit_on):,} of {len(train_ratings):,} training ratings: {fit_on['user_id'].nunique():,} users (the "
            f"evaluated users and a seed-{config.seed} sample of others, cap {config.baseline_fit_ratings:,})"),
        "baselines_fit": MetadataValue.json(ev.baseline_fit_costs(baselines)),
        **{name: MetadataValue.float(float(result.metrics[name])) for name in ranking},
        **{name: MetadataValue.float(float(value)) for name, value in result.extra.items()},
        "metrics": table(models_table, 20),
        "model_vs_baselines": figure(comparison, "model vs baselines"),
        "slices": table(result.slices.round(4), 60),
        "slices_plot": figure(slices_plot, "nDCG by slice"),
        "mlflow_run": MetadataValue.url(trained_model.get("run_url", "")),
        "mlflow_metrics_logged": MetadataValue.int(n_logged),
        "artifact_dir": MetadataValue.path(str(out_dir)),
        "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
    }
    plt.close(comparison)
    plt.close(slices_plot)
    manifest = {
        "k": config.k,
        "source": source,
        "model_dir": trained_model["model_dir"],
        "onnx_dir": onnx_model.get("onnx_dir"),
        "run_id": trained_model["run_id"],
        "metrics": _jsonable(result.metrics),
        "models": json.loads(result.models.to_json(orient="index")),
        "per_user_path": str(per_user_path),
        "artifact_dir": str(out_dir),
        "n_test_users": result.n_test_users,
        "n_test_users_total": int(all_users),
    }
    return Output(manifest, metadata=metadata)
