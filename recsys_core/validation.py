"""Great Expectations suites for ratings and items, and the split of raw rows into validated and rejected.

Each expectation carries a human-readable reason. A row that fails any row-level expectation goes to the
rejected frame with every reason it failed (plus the reader's parse error), so `valid + rejected == raw`
always holds. Table-level expectations (the schema) cannot be pinned on rows: they make `schema_ok` false
and the pipeline's blocking check stops the graph.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from recsys_core.ingestion import PARSE_ERROR, SOURCE_LINE
from recsys_core.schema import ITEM_ID, RATING, RATING_COLUMNS, TIMESTAMP, USER_ID

REASON = "reason"
ITEM_KNOWN = "item_known"
SOURCE_FILE = "source_file"
RAW_RATING_COLUMNS = [*RATING_COLUMNS, PARSE_ERROR, SOURCE_LINE]
RAW_ITEM_COLUMNS = [ITEM_ID, "title", "genres", "year", "text", SOURCE_LINE, PARSE_ERROR]

logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass(frozen=True)
class RatingRules:
    """What a plausible rating row looks like. MovieLens 'latest' releases use half stars: pass them here."""

    allowed_ratings: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
    min_timestamp: int = 631_152_000  # 1990-01-01: older than any web rating log
    max_future_seconds: int = 86_400  # a day of clock skew, no more


@dataclass(frozen=True)
class ItemRules:
    min_year: int = 1870  # the first films
    max_year: int = 2100


@dataclass
class ValidationOutcome:
    """Validated rows in canonical dtypes, rejected rows with reasons, and the suite's per-expectation summary."""

    valid: pd.DataFrame
    rejected: pd.DataFrame
    expectations: list[dict[str, Any]]
    schema_ok: bool
    seconds: float
    docs_path: str | None = None
    ge_result: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected_share(self) -> float:
        total = len(self.valid) + len(self.rejected)
        return len(self.rejected) / total if total else 0.0

    def reason_counts(self) -> pd.DataFrame:
        if self.rejected.empty:
            return pd.DataFrame({REASON: pd.Series(dtype="string"), "rows": pd.Series(dtype="int64")})
        reasons = self.rejected[REASON].str.split("; ").explode()
        reasons = reasons.str.replace(r":.*$", "", regex=True)
        return reasons.value_counts().rename_axis(REASON).reset_index(name="rows")


def combine_rating_sources(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Raw frames from several files as one, each row tagged with its `source_file` so rejects name file and line."""
    tagged = [frame.assign(**{SOURCE_FILE: name}) for name, frame in frames.items()]
    combined = pd.concat(tagged, ignore_index=True)
    combined[SOURCE_FILE] = combined[SOURCE_FILE].astype("category")
    return combined


def _expectation(kind: type, reason: str, **kwargs: Any) -> Any:
    return kind(meta={"reason": reason}, **kwargs)


def rating_suite(rules: RatingRules, now: int) -> list[Any]:
    """Catalogue membership is checked on a derived `item_known` column: a catalogue inlined as a value set is
    re-serialised by GE for every metric it computes (seconds per million rows on a MovieLens-sized catalogue)."""
    e = gx.expectations
    return [
        _expectation(e.ExpectTableColumnsToMatchSet, "schema: unexpected or missing columns",
                     column_set=RAW_RATING_COLUMNS, exact_match=False),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeNull, "unreadable", column=PARSE_ERROR),
        *[_expectation(e.ExpectColumnValuesToNotBeNull, f"missing {c}", column=c) for c in RATING_COLUMNS],
        _expectation(e.ExpectColumnValuesToBeInSet, f"rating not in {list(rules.allowed_ratings)}",
                     column=RATING, value_set=list(rules.allowed_ratings)),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeBetween, "implausible timestamp", column=TIMESTAMP,
                     min_value=rules.min_timestamp, max_value=now + rules.max_future_seconds),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeInSet, "unknown item_id", column=ITEM_KNOWN, value_set=[True]),
        _expectation(e.ExpectCompoundColumnsToBeUnique, "duplicate (user_id, item_id, timestamp)",
                     column_list=[USER_ID, ITEM_ID, TIMESTAMP]),  # fmt: skip
    ]


def item_suite(rules: ItemRules) -> list[Any]:
    e = gx.expectations
    return [
        _expectation(e.ExpectTableColumnsToMatchSet, "schema: unexpected or missing columns",
                     column_set=RAW_ITEM_COLUMNS, exact_match=True),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeNull, "unreadable", column=PARSE_ERROR),
        _expectation(e.ExpectColumnValuesToNotBeNull, "missing item_id", column=ITEM_ID),
        _expectation(e.ExpectColumnValuesToBeUnique, "duplicate item_id", column=ITEM_ID),
        _expectation(e.ExpectColumnValuesToNotBeNull, "missing title", column="title"),
        _expectation(e.ExpectColumnValueLengthsToBeBetween, "empty title", column="title", min_value=1),
        _expectation(e.ExpectColumnValuesToBeBetween, "implausible year", column="year",
                     min_value=rules.min_year, max_value=rules.max_year),  # fmt: skip
    ]


def _run_suite(name: str, frame: pd.DataFrame, expectations: list[Any], docs_dir: Path | None) -> tuple[Any, str | None]:
    """Runs the suite through a Checkpoint; with `docs_dir`, a file context there also renders Data Docs.

    Nullable integer columns go to GE as float64 (NA -> NaN, ids and timestamps exact below 2**53): GE only
    vectorises range checks on numpy dtypes.
    """
    nullable_ints = [c for c in frame.columns if isinstance(frame[c].dtype, pd.Int64Dtype)]
    frame = frame.astype({c: "float64" for c in nullable_ints})
    if docs_dir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_or_update_pandas(f"{name}_source")
    asset = source.get_asset(name) if name in source.get_asset_names() else source.add_dataframe_asset(name)
    batches = {b.name: b for b in asset.batch_definitions}
    batch_definition = batches.get("all") or asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch_definition, suite=suite)
    )
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs_dir is not None else []
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=[definition], actions=actions,
                      result_format={"result_format": "COMPLETE"})  # fmt: skip
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    validation = next(iter(result.run_results.values()))
    docs = None
    if docs_dir is not None:
        sites = context.get_docs_sites_urls()
        docs = sites[0]["site_url"] if sites else None
    return validation, docs


def _split(
    raw: pd.DataFrame, validation: Any, keep_first_of: dict[str, list[str]], seconds_from: float,
    docs: str | None, canonical: dict[str, str],
) -> ValidationOutcome:  # fmt: skip
    """Turns per-expectation failing indices into per-row reasons and splits the frame."""
    flagged: list[pd.Series] = []
    summary: list[dict[str, Any]] = []
    schema_ok = True
    for result in validation.results:
        config = result.expectation_config
        reason = config.meta.get("reason", config.type)
        kwargs = config.kwargs
        summary.append({"expectation": config.type, "column": kwargs.get("column") or ",".join(kwargs.get("column_list", [])),
                        "reason": reason, "success": bool(result.success),
                        "unexpected": int(result.result.get("unexpected_count") or 0)})  # fmt: skip
        if result.exception_info and result.exception_info.get("raised_exception"):
            schema_ok = False
            summary[-1]["error"] = str(result.exception_info.get("exception_message"))[:200]
            continue
        index = result.result.get("unexpected_index_list")
        if index is None:  # table-level expectation
            schema_ok &= bool(result.success)
            continue
        index = pd.Index(index)
        if config.type in keep_first_of and len(index):  # the first of each duplicate group stays valid
            repeats = raw.duplicated(subset=keep_first_of[config.type], keep="first")
            index = index[repeats.reindex(index).to_numpy(dtype=bool)]
        if len(index) and kwargs.get("column") == PARSE_ERROR:
            flagged.append(reason + ": " + raw.loc[index, PARSE_ERROR].astype(str))
        elif len(index):
            flagged.append(pd.Series(reason, index=index))
    rejected_mask = pd.Series(False, index=raw.index)
    reasons = pd.Series(dtype="string")
    if flagged:
        all_flags = pd.concat(flagged)
        reasons = all_flags.groupby(level=0, sort=True).agg("; ".join)
        rejected_mask.loc[reasons.index] = True
    rejected = raw[rejected_mask].copy()
    rejected[REASON] = reasons.reindex(rejected.index).astype("string")
    valid = raw[~rejected_mask]
    if schema_ok:
        valid = valid[list(canonical)].astype(canonical)
    return ValidationOutcome(
        valid=valid.reset_index(drop=True), rejected=rejected.reset_index(drop=True), expectations=summary,
        schema_ok=schema_ok, seconds=time.perf_counter() - seconds_from, docs_path=docs,
        ge_result={"success": bool(validation.success), "statistics": dict(validation.statistics)},
    )  # fmt: skip


def validate_ratings(
    raw: pd.DataFrame, known_item_ids: np.ndarray, rules: RatingRules = RatingRules(),
    docs_dir: Path | None = None, now: int | None = None,
) -> ValidationOutcome:  # fmt: skip
    """Splits raw ratings into validated (canonical dtypes) and rejected (with reasons)."""
    start = time.perf_counter()
    now = int(time.time()) if now is None else now
    frame = raw.reset_index(drop=True)
    checked = frame.assign(**{ITEM_KNOWN: frame[ITEM_ID].isin(known_item_ids).where(frame[ITEM_ID].notna())})
    validation, docs = _run_suite("ratings", checked, rating_suite(rules, now), docs_dir)
    return _split(frame, validation, {"expect_compound_columns_to_be_unique": [USER_ID, ITEM_ID, TIMESTAMP]}, start,
                  docs, {USER_ID: "int64", ITEM_ID: "int64", RATING: "float32", TIMESTAMP: "int64"})  # fmt: skip


def validate_items(raw: pd.DataFrame, rules: ItemRules = ItemRules(), docs_dir: Path | None = None) -> ValidationOutcome:
    """Splits the raw catalogue into validated items and rejected ones (with reasons)."""
    start = time.perf_counter()
    frame = raw.reset_index(drop=True)
    validation, docs = _run_suite("items", frame, item_suite(rules), docs_dir)
    return _split(frame, validation, {"expect_column_values_to_be_unique": [ITEM_ID]}, start, docs,
                  {ITEM_ID: "int64", "title": "string", "genres": "string", "year": "Int64", "text": "string"})  # fmt: skip
