"""Split: validated ratings into reproducible train / validation / test parts (temporal by default)."""

from typing import Literal

import pandas as pd
from dagster import AssetExecutionContext, AssetOut, Config, MetadataValue, Output, multi_asset
from pydantic import Field

from recsys_core.schema import ITEM_ID, TIMESTAMP, USER_ID
from recsys_core.split import split_ratings
from recsys_dagster.metadata import table


class SplitConfig(Config):
    strategy: Literal["temporal", "random", "leave_last_out"] = Field(
        "temporal", description="temporal: one global time cut-off (what production sees); random: per-user stratified; "
        "leave_last_out: each user's last rating is test, the one before validation.",
    )
    validation_fraction: float = Field(0.1, description="Share of ratings for validation (ignored by leave_last_out).")
    test_fraction: float = Field(0.1, description="Share of ratings for test (ignored by leave_last_out).")
    seed: int = Field(42, description="Breaks timestamp ties and drives the random split.")


def _describe(name: str, part: pd.DataFrame, train: pd.DataFrame) -> dict:
    times = pd.to_datetime(part[TIMESTAMP], unit="s") if len(part) else pd.Series(dtype="datetime64[ns]")
    return {
        "part": name,
        "ratings": len(part),
        "users": part[USER_ID].nunique(),
        "items": part[ITEM_ID].nunique(),
        "users not in train": int(part.loc[~part[USER_ID].isin(train[USER_ID]), USER_ID].nunique()),
        "items not in train": int(part.loc[~part[ITEM_ID].isin(train[ITEM_ID]), ITEM_ID].nunique()),
        "from": str(times.min()) if len(part) else "",
        "to": str(times.max()) if len(part) else "",
    }


@multi_asset(
    outs={
        "train_ratings": AssetOut(description="Ratings the model learns from.", kinds={"pandas"}),
        "validation_ratings": AssetOut(description="Ratings for early stopping and model selection.", kinds={"pandas"}),
        "test_ratings": AssetOut(description="Held-out ratings for offline evaluation.", kinds={"pandas"}),
    },
    description="Splits validated ratings into train / validation / test; a pure function of (ratings, config).",
)
def rating_splits(context: AssetExecutionContext, config: SplitConfig, validated_ratings: pd.DataFrame):
    split = split_ratings(validated_ratings, config.strategy, config.validation_fraction, config.test_fraction, config.seed)
    summary = pd.DataFrame([_describe(name, part, split.train) for name, part in
                            (("train", split.train), ("validation", split.validation), ("test", split.test))])  # fmt: skip
    context.log.info(f"{config.strategy} split: {split.sizes()}")
    common = {"strategy": config.strategy, "seed": config.seed, "summary": table(summary)}
    for name, part in (("train_ratings", split.train), ("validation_ratings", split.validation), ("test_ratings", split.test)):
        yield Output(
            part,
            output_name=name,
            metadata={
                **common,
                "dagster/row_count": MetadataValue.int(len(part)),
                "share": MetadataValue.float(round(len(part) / max(len(validated_ratings), 1), 4)),
            },
        )
