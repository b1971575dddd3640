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
from recsys_core.tuning import Budget, tune_hybrid
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
    next_items: int = Field(TrainConfig.next_items, description="0: the towers predict a random held-out share of a user's items; "
                            ">0: the next this many items from the earlier ones (causal, for next-item data).")
    prior: str = Field(TrainConfig.prior, description="Collaborative prior: 'als' (implicit ALS), 'ease' (low-rank EASE scores) or 'als+ease' (their blend).")
    prior_dim: int = Field(TrainConfig.prior_dim, description="Width of the prior's factors added to the ranking score; 0 turns the prior off.")
    prior_weight: float = Field(TrainConfig.prior_weight, description="Weight of the prior's score beside the towers' score.")
    prior_reg: float = Field(TrainConfig.prior_reg, description="EASE's L2 penalty (prior 'ease' or 'als+ease').")
    prior_ease_share: float = Field(TrainConfig.prior_ease_share, description="EASE's share of the 'als+ease' prior.")
    rating_prior_dim: int = Field(TrainConfig.rating_prior_dim, description="Width of the biased MF blended into predicted ratings; 0 turns it off.")
    rating_prior_weight: float = Field(TrainConfig.rating_prior_weight, description="Share of the MF in the predicted rating.")
    patience: int = Field(TrainConfig.patience, description="Epochs without a better validation nDCG before stopping.")
    epoch_users: int = Field(TrainConfig.epoch_users, description="Users (examples) per epoch: a seeded sample when there are more.")
    validation_users: int = Field(TrainConfig.validation_users, description="Validation users ranked per epoch: a seeded sample when there are more.")
    time_budget_minutes: float = Field(TrainConfig.time_budget_minutes, description="Wall-clock budget of the whole fit "
                                       "(no epoch starts that would end past it; the cosine decay is sized to it); 0: none.")
    nproc_per_node: int = Field(1, ge=1, description="Processes for data-parallel training (PyTorch DDP under torchrun: "
                                "gloo on CPU, NCCL with one GPU each); 1 trains in this process.")  # fmt: skip


class TuningConfig(Config):
    """Optuna search of the hybrid's knobs on validation_ratings; `trials=0` (the default) keeps `TrainingConfig`."""

    trials: int = Field(0, description="Trials of the TPE search (0: no search, trained_model uses its own config).")
    minutes: float = Field(10.0, description="Wall-clock budget of the sampled trials: the search stops after `trials` "
                           "or this, but the defaults and then the sequential preset always run first.")
    epochs: int = Field(TrainConfig.epochs, description="Upper bound per trial (early stopping and pruning end most sooner).")


def _tags(context: AssetExecutionContext, fingerprint: str, text) -> dict[str, str]:
    return {
        "dagster.run_id": context.run_id,
        "dagster.asset_key": "trained_model",
        "data_fingerprint": fingerprint,
        "text_features_fingerprint": text.fingerprint,
        "text_model": text.model_id,
    }


@asset(
    description="The hybrid's knobs chosen on validation_ratings by an Optuna search (TPE, pruning on validation "
    "nDCG@10 per epoch); every trial is a nested MLflow run under the training run. Off by default (trials=0).",
    kinds={"optuna", "mlflow"},
)
def tuned_config(
    context: AssetExecutionContext,
    config: TuningConfig,
    train_ratings: pd.DataFrame,
    validation_ratings: pd.DataFrame,
    validated_items: pd.DataFrame,
    item_text_features: dict,
    mlflow: MlflowResource,
    compute: ComputeResource,
) -> Output[dict]:
    if config.trials < 1 or validation_ratings.empty:
        return Output({"params": {}, "run_id": None, "dagster_run_id": context.run_id}, metadata={"trials": 0})
    text = load_item_text_features(item_text_features["path"])
    base = TrainConfig(epochs=config.epochs, seed=compute.seed, device=str(compute.torch_device()), show_progress=False)
    settings = mlflow.settings()
    experiment_id = settings.activate()
    fingerprint = ratings_fingerprint(train_ratings, validation_ratings)
    with mlflow_api.start_run(run_name=f"trained_model-{context.run_id[:8]}", tags=_tags(context, fingerprint, text)) as run:
        budget = Budget(trials=config.trials, minutes=config.minutes, seed=compute.seed)
        result = tune_hybrid(train_ratings, validation_ratings, validated_items, text, base, budget, log_mlflow=True)
        mlflow_api.log_params({f"tuned_{key}": value for key, value in result.best_params.items()})
        mlflow_api.log_metric("tuning_best_val_ndcg_at_10", result.best_value)
        run_id = run.info.run_id
    context.log.info(f"search: best validation nDCG@10 {result.best_value:.4f} with {result.best_params}")
    return Output(
        {"params": result.best_params, "run_id": run_id, "dagster_run_id": context.run_id},
        metadata={
            "trials": MetadataValue.int(len(result.trials)),
            "pruned": MetadataValue.int(result.n_pruned),
            "best_val_ndcg_at_10": MetadataValue.float(result.best_value),
            "search": table(result.trials.round(4)),
            "mlflow_run": MetadataValue.url(settings.run_url(experiment_id, run_id)),
        },
    )


def _number(value: float | int | bool) -> MetadataValue:
    if isinstance(value, bool):
        return MetadataValue.bool(value)
    return MetadataValue.int(value) if isinstance(value, int) else MetadataValue.float(float(value))


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
    "fixed implicit-ALS and biased-MF priors) trained on train_ratings with early stopping on validation_ratings, "
    "with tuned_config's knobs when a search ran; one MLflow run per materialisation.",
    kinds={"pytorch", "mlflow"},
)
def trained_model(
    context: AssetExecutionContext,
    config: TrainingConfig,
    train_ratings: pd.DataFrame,
    validation_ratings: pd.DataFrame,
    validated_items: pd.DataFrame,
    item_text_features: dict,
    tuned_config: dict,
    mlflow: MlflowResource,
    compute: ComputeResource,
) -> Output[dict]:
    text = load_item_text_features(item_text_features["path"])
    device = compute.torch_device()
    knobs = {**config.model_dump(exclude={"nproc_per_node"}), **tuned_config["params"]}
    train_config = TrainConfig(**knobs, seed=compute.seed, device=str(device), show_progress=True)
    fingerprint = ratings_fingerprint(train_ratings, validation_ratings)
    settings = mlflow.settings()
    experiment_id = settings.activate()
    # the search of this same Dagster run opened the training run (its trials are nested there): continue it
    searched = tuned_config["run_id"] if tuned_config["dagster_run_id"] == context.run_id else None
    new_run = {"run_name": f"trained_model-{context.run_id[:8]}", "tags": _tags(context, fingerprint, text)}
    with mlflow_api.start_run(**({"run_id": searched} if searched else new_run)) as run:
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
                                "best_epoch": result.best_epoch,
                                **{f"cost_{k}": float(v) for k, v in result.cost.items()}})  # fmt: skip
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
        "cost": result.cost,
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
            **{k: _number(v) for k, v in result.cost.items() if k != "epochs_run"},
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
