"""Features: BERT vectors of each item's text, aligned with the item index, encoded incrementally through a vector cache.

With `fine_tune` on, the encoder's top layers are first fine-tuned on the training ratings (cached by their inputs,
logged to MLflow) and the vectors come from the fine-tuned encoder.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from pydantic import Field

from recsys_core.finetune import FineTuneConfig, FineTunedTextEncoder, fine_tune_cached
from recsys_core.paths import recsys_home
from recsys_core.schema import GENRE_SEPARATOR, ITEM_ID
from recsys_core.similar_items import similar_items
from recsys_core.text_features import ItemTextFeatures, encode_items, load_item_text_features, project_2d
from recsys_dagster.metadata import figure, table
from recsys_dagster.resources.text_encoder import TextEncoderResource
from recsys_dagster.resources.tracking import MlflowResource

# The projection plot shows at most this many points (a fixed sample), and colours this many genres.
PLOT_MAX_POINTS = 5_000
PLOT_GENRES = 10
SANITY_ITEMS = 5


class TextFeaturesConfig(Config):
    """Off by default: the fine-tune adds about a minute on MovieLens 100k (see `recsys bench coldstart`)."""

    fine_tune: bool = Field(False, description="Fine-tune the encoder's top layers so item text predicts ALS item factors.")
    fine_tune_layers: int = Field(FineTuneConfig.layers, description="Top BERT layers that train.")
    fine_tune_epochs: int = Field(FineTuneConfig.epochs, description="Passes over the items with training ratings.")
    fine_tune_lr: float = Field(FineTuneConfig.lr, description="AdamW learning rate of the BERT layers.")
    fine_tune_loss: str = Field(FineTuneConfig.loss, description='"mse" on the scaled factors or "contrastive" (InfoNCE).')
    fine_tune_head_init: str = Field(
        FineTuneConfig.head_init, description='"ridge": the head starts at the ridge probe of the frozen vectors; "random".'
    )
    fine_tune_pair_weight: float = Field(
        FineTuneConfig.pair_weight, description="Weight of the co-consumed item pairs' InfoNCE beside the factor loss; 0: off."
    )
    fine_tune_seed: int = Field(FineTuneConfig.seed, description="Seeds the ALS targets, the head and the batch order.")

    def fine_tune_config(self) -> FineTuneConfig:
        return FineTuneConfig(
            layers=self.fine_tune_layers, epochs=self.fine_tune_epochs, lr=self.fine_tune_lr,
            loss=self.fine_tune_loss, head_init=self.fine_tune_head_init, pair_weight=self.fine_tune_pair_weight,
            seed=self.fine_tune_seed,
        )  # fmt: skip


def _first_genres(items: pd.DataFrame, item_ids: np.ndarray) -> pd.Series:
    genres = items.set_index(ITEM_ID)["genres"].astype("string").fillna("").reindex(item_ids).fillna("")
    first = genres.str.split(GENRE_SEPARATOR, regex=False).str[0].replace("", "(none)")
    common = first.value_counts().index[:PLOT_GENRES]
    return first.where(first.isin(common), "other")


def _projection_figure(features: ItemTextFeatures, items: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    rows = np.arange(len(features.item_ids))
    if len(rows) > PLOT_MAX_POINTS:
        rows = np.sort(rng.choice(rows, PLOT_MAX_POINTS, replace=False))
    points = project_2d(features.vectors[rows])
    genres = _first_genres(items, features.item_ids[rows]).to_numpy()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    named = sorted(set(genres) - {"other"})
    colours = {genre: plt.get_cmap("tab10")(i) for i, genre in enumerate(named)} | {"other": "lightgrey"}
    for genre in [*named, "other"]:
        mask = genres == genre
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6, color=colours[genre], label=f"{genre} ({mask.sum()})")
    ax.set_title(f"Item text vectors, PCA 2-D ({features.model_id})", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(title="first genre", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _neighbour_table(features: ItemTextFeatures, items: pd.DataFrame) -> pd.DataFrame:
    """Nearest neighbours of the first few items, so a reader sees whether close items share genres."""
    titles = items.set_index(ITEM_ID)[["title", "genres"]]
    rows = []
    for item_id in features.item_ids[:SANITY_ITEMS]:
        for _, hit in similar_items(features, int(item_id), k=3).iterrows():
            rows.append({
                "item": titles.at[item_id, "title"], "item genres": titles.at[item_id, "genres"],
                "neighbour": titles.at[int(hit[ITEM_ID]), "title"], "neighbour genres": titles.at[int(hit[ITEM_ID]), "genres"],
                "cosine": round(float(hit["cosine"]), 3),
            })  # fmt: skip
    return pd.DataFrame(rows)


@asset(
    description="L2-normalised BERT vectors of each item's title, year, genres and description (all-MiniLM-L6-v2 by "
    "default, optionally fine-tuned on train_ratings), sorted by item id; only new or changed texts are encoded.",
    kinds={"pytorch", "numpy"},
)
def item_text_features(
    context: AssetExecutionContext,
    config: TextFeaturesConfig,
    validated_items: pd.DataFrame,
    train_ratings: pd.DataFrame,
    text_encoder: TextEncoderResource,
    mlflow: MlflowResource,
) -> Output[dict]:
    encoder = text_encoder.load_encoder()
    fine_tuned: dict[str, MetadataValue | str | float | bool] = {"fine_tuned": False}
    if config.fine_tune:
        settings = mlflow.settings()
        result = fine_tune_cached(
            validated_items, train_ratings, encoder, config.fine_tune_config(), text_encoder.cache_path(), settings
        )
        encoder = FineTunedTextEncoder.from_base(encoder, result.adapter_path)
        context.log.info(f"fine-tune {result.fingerprint[:12]} {'trained' if result.trained else 'loaded from the cache'}")
        fine_tuned = {
            "fine_tuned": True,
            "fine_tune_fingerprint": result.fingerprint,
            "fine_tune_trained_now": result.trained,
            "fine_tune_seconds": result.train_seconds,
            "fine_tune_final_loss": round(result.losses[-1], 5),
            "fine_tune_adapter": MetadataValue.path(str(result.adapter_path)),
        }
        if result.mlflow_run_id:
            experiment_id = settings.client().get_run(result.mlflow_run_id).info.experiment_id
            fine_tuned["fine_tune_mlflow_run"] = MetadataValue.url(settings.run_url(experiment_id, result.mlflow_run_id))
    features = encode_items(validated_items, encoder, text_encoder.cache_path())
    out_dir = recsys_home() / "artifacts" / "item_text_features" / features.fingerprint[:16]
    path = features.save(out_dir / "features.npz")

    plot_path = out_dir / "projection.png"
    plots: dict[str, MetadataValue] = {}
    if len(features.item_ids) >= 2:
        fig = _projection_figure(features, validated_items)
        fig.savefig(plot_path, dpi=90, bbox_inches="tight")
        plots = {"projection": figure(fig, "PCA projection of item text vectors coloured by first genre"),
                 "projection_png": MetadataValue.path(str(plot_path))}  # fmt: skip

    throughput = features.n_encoded / features.encode_seconds if features.encode_seconds > 0 else 0.0
    manifest = {
        "path": str(path),
        "model_id": features.model_id,
        "dim": features.dim,
        "fingerprint": features.fingerprint,
        "n_items": len(features.item_ids),
        "n_encoded": features.n_encoded,
        "n_reused": features.n_reused,
        "backend": text_encoder.backend,
        "projection_png": str(plot_path) if plots else "",
        "fine_tune_fingerprint": fine_tuned.get("fine_tune_fingerprint", ""),
    }
    context.log.info(f"{features.n_encoded} items encoded, {features.n_reused} reused from the cache")
    return Output(
        manifest,
        metadata={
            "model": features.model_id,
            "backend": text_encoder.backend,
            "device": str(encoder.device),
            "dim": features.dim,
            "n_items": len(features.item_ids),
            "items_encoded": features.n_encoded,
            "items_reused": features.n_reused,
            "encode_seconds": round(features.encode_seconds, 3),
            "items_per_second": round(throughput, 1),
            "fingerprint": features.fingerprint,
            "path": MetadataValue.path(str(path)),
            **fine_tuned,
            **plots,
            "nearest_neighbours": table(_neighbour_table(features, validated_items)),
        },
    )


@asset_check(
    asset=item_text_features,
    additional_ins={"validated_items": AssetIn("validated_items")},
    blocking=True,
    description="One finite unit vector per validated item, in id order.",
)
def vectors_cover_items_and_are_unit(item_text_features: dict, validated_items: pd.DataFrame) -> AssetCheckResult:
    features = load_item_text_features(Path(item_text_features["path"]))
    norms = np.linalg.norm(features.vectors, axis=1)
    expected = np.sort(validated_items[ITEM_ID].to_numpy(dtype=np.int64))
    aligned = np.array_equal(features.item_ids, expected)
    finite = bool(np.isfinite(features.vectors).all())
    unit = bool(np.allclose(norms, 1.0, atol=1e-3))
    return AssetCheckResult(
        passed=aligned and finite and unit,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "ids_match_validated_items": aligned,
            "all_finite": finite,
            "min_norm": float(norms.min()) if len(norms) else 0.0,
            "max_norm": float(norms.max()) if len(norms) else 0.0,
        },
    )
