"""Cross-stage checks: a model trained on older data than the validated ratings it should reflect; a forgotten user
still present anywhere between validation and the exported bundle."""

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetIn,
    AssetKey,
    MetadataValue,
    asset_check,
)

from recsys_core.privacy import Tombstones, forgotten_in_bundle, forgotten_in_frame

VALIDATED_RATINGS = AssetKey("validated_ratings")


@asset_check(asset="trained_model", additional_deps=[VALIDATED_RATINGS], blocking=False,
             description="Warns when validated_ratings has been materialised since the model was trained.")  # fmt: skip
def model_newer_than_data(context: AssetCheckExecutionContext) -> AssetCheckResult:
    instance = context.instance
    model = instance.get_latest_materialization_event(AssetKey("trained_model"))
    data = instance.get_latest_materialization_event(VALIDATED_RATINGS)
    if model is None or data is None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                description="trained_model or validated_ratings was never materialised")  # fmt: skip
    lag = data.timestamp - model.timestamp
    return AssetCheckResult(
        passed=lag <= 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"model_age_behind_data_seconds": MetadataValue.float(max(lag, 0.0)),
                  "model_run": MetadataValue.text(model.run_id), "data_run": MetadataValue.text(data.run_id)},
    )  # fmt: skip


@asset_check(
    asset="onnx_model", blocking=True,
    additional_ins={name: AssetIn(name) for name in ("validated_ratings", "train_ratings", "validation_ratings", "test_ratings")},
    description="No tombstoned user (recsys forget-user) in validated_ratings, the splits, the model bundle or the "
    "exported serving folders.",
)  # fmt: skip
def no_forgotten_users(
    onnx_model: dict, validated_ratings: pd.DataFrame, train_ratings: pd.DataFrame, validation_ratings: pd.DataFrame,
    test_ratings: pd.DataFrame,
) -> AssetCheckResult:  # fmt: skip
    users = Tombstones().users()
    frames = {"validated_ratings": validated_ratings, "train_ratings": train_ratings,
              "validation_ratings": validation_ratings, "test_ratings": test_ratings}  # fmt: skip
    found = {name: forgotten_in_frame(frame, users) for name, frame in frames.items()}
    for place in ("model_dir", "onnx_dir", "quantized_dir"):
        found[place] = forgotten_in_bundle(onnx_model[place], users)
    return AssetCheckResult(
        passed=not any(found.values()), severity=AssetCheckSeverity.ERROR,
        metadata={"tombstoned_users": MetadataValue.int(len(users)),
                  "found": MetadataValue.json({place: ids[:20] for place, ids in found.items() if ids})},
    )  # fmt: skip


CHECKS = [model_newer_than_data, no_forgotten_users]
