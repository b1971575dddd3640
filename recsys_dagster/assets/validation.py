"""Validation: Great Expectations suites split raw rows into validated and rejected; blocking checks stop bad data."""

from collections.abc import Iterator

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    multi_asset,
)
from pydantic import Field

from recsys_core.events import events_to_ratings
from recsys_core.paths import recsys_home
from recsys_core.privacy import Tombstones, drop_forgotten
from recsys_core.validation import (
    ItemRules,
    RatingRules,
    ValidationOutcome,
    ValidationReport,
    combine_rating_sources,
    validate_items,
    validate_ratings,
)
from recsys_dagster.assets.ingestion import rating_summary
from recsys_dagster.metadata import table


class ValidationConfig(Config):
    max_rejected_share: float = Field(0.01, description="Blocking check fails when more rows than this are rejected.")
    allowed_ratings: list[float] = Field([1.0, 2.0, 3.0, 4.0, 5.0], description="Half stars: add 0.5, 1.5, ...")
    data_docs: bool = Field(True, description="Render Great Expectations Data Docs under $RECSYS_HOME/great_expectations.")


def _checks(asset: str, report: ValidationReport, config: ValidationConfig) -> list[AssetCheckResult]:
    failed = [e for e in report.expectations if not e["success"]]
    return [
        AssetCheckResult(
            asset_key=asset, check_name="schema_matches", passed=report.schema_ok,
            severity=AssetCheckSeverity.ERROR,
            metadata={"failed_table_expectations": MetadataValue.json([e for e in failed if e["unexpected"] == 0])},
        ),
        AssetCheckResult(
            asset_key=asset, check_name="rejected_share_below_threshold",
            passed=report.schema_ok and report.rejected_share <= config.max_rejected_share,
            severity=AssetCheckSeverity.ERROR,
            metadata={"rejected_share": MetadataValue.float(report.rejected_share),
                      "threshold": MetadataValue.float(config.max_rejected_share),
                      "rejected_rows": MetadataValue.int(report.rejected_rows)},
        ),
    ]  # fmt: skip


def _check_specs(asset: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("schema_matches", asset=asset, blocking=True, description="Columns and types are the canonical ones."),
        AssetCheckSpec("rejected_share_below_threshold", asset=asset, blocking=True,
                       description="Quarantined rows stay under `max_rejected_share` of the input."),
    ]  # fmt: skip


def _validation_metadata(report: ValidationReport, raw_rows: int) -> dict[str, MetadataValue]:
    metadata = {
        "raw_rows": MetadataValue.int(raw_rows),
        "rejected_rows": MetadataValue.int(report.rejected_rows),
        "rejected_share": MetadataValue.float(report.rejected_share),
        "expectations": table(pd.DataFrame(report.expectations), 50),
        "validation_seconds": MetadataValue.float(round(report.seconds, 3)),
        "great_expectations": MetadataValue.json(report.ge_result),
    }
    if report.docs_path:
        metadata["data_docs"] = MetadataValue.url(report.docs_path)
    return metadata


def _rejected_output(outcome: ValidationOutcome, output_name: str) -> Output[pd.DataFrame]:
    return Output(
        outcome.rejected,
        output_name=output_name,
        metadata={"rows": MetadataValue.int(len(outcome.rejected)), "reasons": table(outcome.report.reason_counts()),
                  "preview": table(outcome.rejected, 10)},
    )  # fmt: skip


def _docs_dir(config: ValidationConfig, name: str):
    return recsys_home() / "great_expectations" / name if config.data_docs else None


@multi_asset(
    outs={
        "validated_items": AssetOut(description="Items that passed the item suite, canonical dtypes.", kinds={"pandas"}),
        "rejected_items": AssetOut(description="Quarantined item rows, each with the expectations it failed.", kinds={"pandas"}),
    },
    check_specs=_check_specs("validated_items"),
)
def validate_item_catalogue(context: AssetExecutionContext, config: ValidationConfig, raw_items: pd.DataFrame) -> Iterator:
    outcome = validate_items(raw_items, ItemRules(), docs_dir=_docs_dir(config, "items"))
    context.log.info("items: %d valid, %d rejected", len(outcome.valid), len(outcome.rejected))
    metadata = _validation_metadata(outcome.report, len(raw_items))
    metadata["rows"] = MetadataValue.int(len(outcome.valid))
    metadata["preview"] = table(outcome.valid, 10)
    yield Output(outcome.valid, output_name="validated_items", metadata=metadata)
    yield _rejected_output(outcome, "rejected_items")
    yield from _checks("validated_items", outcome.report, config)


@multi_asset(
    outs={
        "validated_ratings": AssetOut(description="Ratings that passed the rating suite, canonical dtypes.", kinds={"pandas"}),
        "rejected_ratings": AssetOut(description="Quarantined rating rows, each with the expectations it failed.", kinds={"pandas"}),
    },
    ins={
        "landed_ratings": AssetIn(metadata={"allow_missing_partitions": True}),
        "landed_events": AssetIn(metadata={"allow_missing_partitions": True}),
    },
    check_specs=_check_specs("validated_ratings"),
)
def validate_rating_log(
    context: AssetExecutionContext,
    config: ValidationConfig,
    raw_ratings: pd.DataFrame,
    landed_ratings: dict[str, pd.DataFrame],
    landed_events: dict[str, pd.DataFrame],
    validated_items: pd.DataFrame,
) -> Iterator:
    """Validates the source's ratings plus every landed drop (a drop whose file could not be read is skipped) and the
    rated events of every landed event window (rejects name the window as `events/<window>` and the event's seq).
    Rows of forgotten users are dropped from every source before validation: neither validated nor quarantined,
    only counted (`forgotten_rows`)."""
    events = {f"events/{window}": events_to_ratings(frame) for window, frame in landed_events.items()}
    combined, forgotten = drop_forgotten(combine_rating_sources({"source": raw_ratings, **landed_ratings, **events}),
                                         Tombstones().users())  # fmt: skip
    rules = RatingRules(allowed_ratings=tuple(config.allowed_ratings))
    known = np.asarray(validated_items["item_id"], dtype=np.int64)
    outcome = validate_ratings(combined, known, rules, docs_dir=_docs_dir(config, "ratings"))
    context.log.info("ratings: %d valid, %d rejected", len(outcome.valid), len(outcome.rejected))
    metadata = {**rating_summary(outcome.valid), **_validation_metadata(outcome.report, len(combined))}
    metadata["drops"] = MetadataValue.int(len(landed_ratings))
    metadata["event_windows"] = MetadataValue.int(len(landed_events))
    metadata["forgotten_rows"] = MetadataValue.int(forgotten)
    yield Output(outcome.valid, output_name="validated_ratings", metadata=metadata)
    yield _rejected_output(outcome, "rejected_ratings")
    yield from _checks("validated_ratings", outcome.report, config)
