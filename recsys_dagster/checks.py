"""Cross-stage checks: a model trained on older data than the validated ratings it should reflect."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue, asset_check

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


CHECKS = [model_newer_than_data]
