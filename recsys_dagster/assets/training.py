"""Training: the hybrid recommender, tracked in MLflow (one run per materialisation), saved as a model directory."""

import json

import mlflow as mlflow_api
import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field

from recsys_core.distributed.launch import train_with_torchrun
from recsys_core.paths import recsys_home
from recsys_core.schema import ratings_fingerprint
from recsys_core.text_features import load_item_text_features
from recsys_core.training import TrainConfig, TrainResult, train_hybrid
from recsys_dagster.metadata import figure, table
from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.tracking import MlflowResource


class TrainingConfig(Config):
    """Knobs of `recsys_core.training.TrainConfig`; the defaults are its defaults (tuned on ml-100k)."""

    epochs: int = Field(TrainConfig.epochs, description="Upper bound; early stopping on validation nDCG@k may end sooner.")
    dim: int = Field(TrainConfig.dim, description="Embedding width of both towers.")
    history_len: int = Field(TrainConfig.history_len, description="Most recent training ratings the user tower attends over.")
    batch_size: int = Field(TrainConfig.batch_size, description="Users per step.")
    lr: float = Field(TrainConfig.lr, description="AdamW learning rate (cosine-decayed over `epochs`).")
    weight_decay: float = Field(TrainConfig.weight_decay, description="AdamW decoupled weight decay.")
    dropout: float = TrainConfig.dropout
    item_dropout: float = Field(TrainConfig.item_dropout, description="Share of items whose ID part is dropped per step (trains the text path).")
    rating_weight: float = Field(TrainConfig.rating_weight, description="Weight of the rating MSE loss.")
    ranking_weight: float = Field(TrainConfig.ranking_weight, description="Weight of the softmax ranking loss.")
    n_negatives: int = Field(TrainConfig.n_negatives, description="0: full softmax; >0: sampled softmax with popularity-corrected negatives.")
    prior_dim: int = Field(TrainConfig.prior_dim, description="Width of the implicit-ALS factors added to the ranking score; 0 turns the prior off.")
    prior_weight: float = Field(TrainConfig.prior_weight, description="Weight of the ALS score beside the towers' score.")
    rating_prior_dim: int = Field(TrainConfig.rating_prior_dim, description="Width of the biased MF blended into predicted ratings; 0 turns it off.")
    rating_prior_weight: float = Field(TrainConfig.rating_prior_weight, description="Share of the MF in the predicted rating.")
    patience: int = Field(TrainConfig.patience, description="Epochs without a better validation nDCG before stopping.")
    nproc_per_node: int = Field(1, ge=1, description="Processes for data-parallel training (PyTorch DDP under torchrun: "
                                "gloo on CPU, NCCL with one GPU each); 1 trains in this process.")  # fmt: skip


def _loss_figure(result: TrainResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = pd.DataFrame(result.history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for column in ("train_ranking_loss", "train_rating_mse"):
        left.plot(history["epoch"], history[column], label=column)
    left.set_xlabel("epoch")
    left.set_title("training losses", fontsize=9)
    left.legend(fontsize=7)
    for column in [c for c in history.columns if c in ("val_ndcg@10", "val_rmse", "val_recall@10")]:
        right.plot(history["epoch"], history[column], label=column)
    right.axvline(result.best_epoch, color="grey", linestyle="--", linewidth=0.8, label="best epoch")
    right.set_xlabel("epoch")
    right.set_title("validation", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


@asset(
    description="The hybrid recommender (gated ID+text item tower, attention-over-history user tower, ensembled with "
    "fixed implicit-ALS and biased-MF priors) trained on train_ratings with early stopping on validation_ratings; "
    "one MLflow run per materialisation.",
    kinds={"pytorch", "mlflow"},
)
def trained_model(
    context: AssetExecutionContext,
    config: TrainingConfig,
    train_ratings: pd.DataFrame,
    validation_ratings: pd.DataFrame,
    validated_items: pd.DataFrame,
    item_text_features: dict,
    mlflow: MlflowResource,
    compute: ComputeResource,
) -> Output[dict]:
    text = load_item_text_features(item_text_features["path"])
    device = compute.torch_device()
    train_config = TrainConfig(**config.model_dump(exclude={"nproc_per_node"}), seed=compute.seed, device=str(device), show_progress=True)
    fingerprint = ratings_fingerprint(train_ratings, validation_ratings)
    settings = mlflow.settings()
    experiment_id = settings.activate()
    tags = {
        "dagster.run_id": context.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "data_fingerprint": fingerprint,
        "text_features_fingerprint": text.fingerprint,
        "text_model": text.model_id,
    }
    with mlflow_api.start_run(run_name=f"trained_model-{context.run_id[:8]}", tags=tags) as run:
        mlflow_api.log_params({**train_config.to_dict(), "n_train": len(train_ratings), "n_validation": len(validation_ratings),
                               "world_size": config.nproc_per_node})  # fmt: skip

        def log_epoch(epoch: int, row: dict[str, float]) -> None:
            mlflow_api.log_metrics({k.replace("@", "_at_"): v for k, v in row.items()}, step=epoch)

        if config.nproc_per_node > 1:
            result = train_with_torchrun(train_ratings, validation_ratings, validated_items, item_text_features["path"],
                                         train_config, config.nproc_per_node, on_epoch=log_epoch)  # fmt: skip
        else:
            result = train_hybrid(train_ratings, validation_ratings, validated_items, text, train_config, on_epoch=log_epoch)
        model_dir = recsys_home() / "artifacts" / "trained_model" / run.info.run_id
        result.bundle.save(model_dir)
        mlflow_api.log_artifact(str(model_dir / "model.safetensors"), "model")
        mlflow_api.log_artifact(str(model_dir / "config.json"), "model")
        mlflow_api.log_artifact(str(model_dir / "item_ids.npy"), "model")
        mlflow_api.log_artifact(str(model_dir / "user_ids.npy"), "model")
        final = {key.replace("@", "_at_"): value for key, value in result.final_metrics.items()}
        mlflow_api.log_metrics({**{f"final_{k}": v for k, v in final.items()}, "train_seconds": result.train_seconds,
                            "best_epoch": result.best_epoch})  # fmt: skip
        fig = _loss_figure(result)
        mlflow_api.log_figure(fig, "loss_curve.png")
        fig.savefig(model_dir / "loss_curve.png", dpi=90, bbox_inches="tight")
        run_id = run.info.run_id

    n_parameters = result.bundle.model.n_parameters()
    manifest = {
        "model_dir": str(model_dir),
        "run_id": run_id,
        "experiment_id": experiment_id,
        "run_url": settings.run_url(experiment_id, run_id),
        "data_fingerprint": fingerprint,
        "text_features_fingerprint": text.fingerprint,
        "metrics": result.final_metrics,
        "config": result.bundle.config.to_dict(),
        "train_config": train_config.to_dict(),
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "n_parameters": n_parameters,
        "trained_until": int(train_ratings["timestamp"].max()),  # serving adds live events newer than this
    }
    (model_dir / "training.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    context.log.info(f"trained in {result.train_seconds:.1f}s, best epoch {result.best_epoch}, MLflow run {run_id}")
    metrics_table = pd.DataFrame([{"metric": k, "value": round(v, 4)} for k, v in result.final_metrics.items()])
    return Output(
        manifest,
        metadata={
            "validation_metrics": table(metrics_table),
            **{k.replace("@", "_at_"): MetadataValue.float(float(v)) for k, v in result.final_metrics.items()},
            "train_seconds": MetadataValue.float(round(result.train_seconds, 2)),
            "best_epoch": MetadataValue.int(result.best_epoch),
            "epochs_run": MetadataValue.int(len(result.history)),
            "n_parameters": MetadataValue.int(n_parameters),
            "device": str(device),
            "world_size": MetadataValue.int(config.nproc_per_node),
            "mlflow_run": MetadataValue.url(manifest["run_url"]),
            "mlflow_run_id": run_id,
            "loss_curve": figure(fig, "training losses and validation metrics per epoch"),
            "loss_curve_png": MetadataValue.path(str(model_dir / "loss_curve.png")),
            "model_dir": MetadataValue.path(str(model_dir)),
            "data_fingerprint": fingerprint,
        },
    )
