"""Great Expectations suites for ratings and items, and the split of raw rows into validated and rejected.

Each expectation carries a human-readable reason. A row that fails any row-level expectation goes to the
rejected frame with every reason it failed (plus the reader's parse error), so `valid + rejected == raw`
always holds. Table-level expectations (the schema) cannot be pinned on rows: they make `schema_ok` false
and the pipeline's blocking check stops the graph.

Ratings are validated in chunks through one validation definition, so memory stays flat however long the log is: the
file-to-file path (`write_validated_ratings`) never holds more than a chunk. Checks that span rows
(duplicates, catalogue membership) are turned into per-row derived columns first, so every chunk is checked
against the whole input.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import great_expectations as gx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)

from recsys_core.ingestion import CHUNK_ROWS, PARSE_ERROR, SOURCE_LINE
from recsys_core.schema import (
    ID_COLUMNS,
    ID_RULE,
    ITEM_DTYPES,
    ITEM_ID,
    MAX_ID,
    RATING,
    RATING_COLUMNS,
    RATING_DTYPES,
    TIMESTAMP,
    USER_ID,
)

REASON = "reason"
ITEM_KNOWN = "item_known"
FIRST_OF_KEY = "first_of_key"
SOURCE_FILE = "source_file"
RATING_KEY = [USER_ID, ITEM_ID, TIMESTAMP]
RAW_RATING_COLUMNS = [*RATING_COLUMNS, PARSE_ERROR, SOURCE_LINE]
RAW_ITEM_COLUMNS = [ITEM_ID, "title", "genres", "year", "text", SOURCE_LINE, PARSE_ERROR]
_PARTIAL_LIST = 20

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
class ValidationReport:
    """What a validation found, without the rows: per-expectation totals, the merged GE result, the Data Docs."""

    valid_rows: int
    rejected_rows: int
    expectations: list[dict[str, Any]]
    schema_ok: bool
    seconds: float
    docs_path: str | None = None
    ge_result: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected_share(self) -> float:
        total = self.valid_rows + self.rejected_rows
        return self.rejected_rows / total if total else 0.0

    def reason_counts(self) -> pd.DataFrame:
        """Rejected rows per reason (a row failing two expectations counts under both)."""
        counts = [(e["reason"], e["unexpected"]) for e in self.expectations if e["unexpected"]]
        frame = pd.DataFrame(counts, columns=[REASON, "rows"]).astype({REASON: "string", "rows": "int64"})
        return frame.sort_values("rows", ascending=False, kind="stable").reset_index(drop=True)


@dataclass
class ValidationOutcome:
    """Validated rows in canonical dtypes, rejected rows with reasons, and the report."""

    valid: pd.DataFrame
    rejected: pd.DataFrame
    report: ValidationReport


class RatingChunks(Protocol):
    """Raw rating rows in line order, in chunks indexed by row position; `keys()` yields the same rows' keys only."""

    rows: int

    def __iter__(self) -> Iterator[pd.DataFrame]: ...

    def keys(self) -> Iterator[pd.DataFrame]: ...


@dataclass
class FrameChunks:
    """An in-memory raw frame seen as chunks (views, no copies)."""

    frame: pd.DataFrame
    chunk_rows: int = CHUNK_ROWS

    @property
    def rows(self) -> int:
        return len(self.frame)

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for start in range(0, max(len(self.frame), 1), self.chunk_rows):
            chunk = self.frame.iloc[start : start + self.chunk_rows]
            yield chunk.set_axis(pd.RangeIndex(start, start + len(chunk)), copy=False)

    def keys(self) -> Iterator[pd.DataFrame]:
        return iter(self)


def combine_rating_sources(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Raw frames from several files as one, each row tagged with its `source_file` so rejects name file and line."""
    tagged = [frame.assign(**{SOURCE_FILE: name}) for name, frame in frames.items()]
    combined = pd.concat(tagged, ignore_index=True)
    combined[SOURCE_FILE] = combined[SOURCE_FILE].astype("category")
    return combined


def _expectation(kind: type, reason: str, **kwargs: Any) -> Any:
    return kind(meta={"reason": reason}, **kwargs)


def id_expectations(columns: Iterable[str]) -> list[Any]:
    """Ids in [0, 2^63) for every source, typed or read from text: the API refuses other ids, so such users and items
    could never be served."""
    return [_expectation(gx.expectations.ExpectColumnValuesToBeBetween, f"{c} {ID_RULE}", column=c, min_value=0,
                         max_value=MAX_ID) for c in columns]  # fmt: skip


def rating_suite(rules: RatingRules, now: int) -> list[Any]:
    """Catalogue membership and duplicates are checked on derived per-row columns (`item_known`, `first_of_key`):
    GE sees one chunk at a time, and a catalogue inlined as a value set is re-serialised for every metric."""
    e = gx.expectations
    return [
        _expectation(e.ExpectTableColumnsToMatchSet, "schema: unexpected or missing columns",
                     column_set=RAW_RATING_COLUMNS, exact_match=False),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeNull, "unreadable", column=PARSE_ERROR),
        *[_expectation(e.ExpectColumnValuesToNotBeNull, f"missing {c}", column=c) for c in RATING_COLUMNS],
        *id_expectations(ID_COLUMNS),
        _expectation(e.ExpectColumnValuesToBeInSet, f"rating not in {list(rules.allowed_ratings)}",
                     column=RATING, value_set=list(rules.allowed_ratings)),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeBetween, "implausible timestamp", column=TIMESTAMP,
                     min_value=rules.min_timestamp, max_value=now + rules.max_future_seconds),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeInSet, "unknown item_id", column=ITEM_KNOWN, value_set=[True]),
        _expectation(e.ExpectColumnValuesToBeInSet, "duplicate (user_id, item_id, timestamp)",
                     column=FIRST_OF_KEY, value_set=[True]),  # fmt: skip
    ]


def item_suite(rules: ItemRules) -> list[Any]:
    e = gx.expectations
    return [
        _expectation(e.ExpectTableColumnsToMatchSet, "schema: unexpected or missing columns",
                     column_set=[*RAW_ITEM_COLUMNS, FIRST_OF_KEY], exact_match=True),  # fmt: skip
        _expectation(e.ExpectColumnValuesToBeNull, "unreadable", column=PARSE_ERROR),
        _expectation(e.ExpectColumnValuesToNotBeNull, "missing item_id", column=ITEM_ID),
        *id_expectations([ITEM_ID]),
        _expectation(e.ExpectColumnValuesToBeInSet, "duplicate item_id", column=FIRST_OF_KEY, value_set=[True]),
        _expectation(e.ExpectColumnValuesToNotBeNull, "missing title", column="title"),
        _expectation(e.ExpectColumnValueLengthsToBeBetween, "empty title", column="title", min_value=1),
        _expectation(e.ExpectColumnValuesToBeBetween, "implausible year", column="year",
                     min_value=rules.min_year, max_value=rules.max_year),  # fmt: skip
    ]


class _ChunkValidator:
    """One GE suite and validation definition, built once and run on every chunk: building them costs more than
    checking 100k rows. (A Checkpoint would re-check its own freshness per run, for no action we need.)"""

    def __init__(self, name: str, expectations: list[Any]) -> None:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe("chunk")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        self._results = context.validation_results_store
        self._definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
        )

    def run(self, frame: pd.DataFrame) -> Any:
        """Nullable integer columns go to GE as float64 (NA -> NaN, ids and timestamps exact below 2**53): GE only
        vectorises range checks on numpy dtypes."""
        nullable_ints = [c for c in frame.columns if isinstance(frame[c].dtype, pd.Int64Dtype)]
        if nullable_ints:
            frame = frame.astype({c: "float64" for c in nullable_ints})
        result = self._definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
        for key in self._results.list_keys():  # the ephemeral store would otherwise keep every chunk's result
            self._results.remove_key(key)
        return result


class _Totals:
    """Per-expectation totals over every chunk, folded into one GE result for the metadata and the Data Docs."""

    def __init__(self) -> None:
        self.merged: Any = None
        self.schema_ok = True
        self.valid_rows = 0
        self.rejected_rows = 0

    def add(self, validation: Any) -> None:
        if self.merged is None:
            self.merged = validation
            for result in validation.results:
                result.result = _summary_counts(result.result)
            return
        self.merged.success = bool(self.merged.success and validation.success)
        for total, result in zip(self.merged.results, validation.results):
            total.success = bool(total.success and result.success)
            if _raised(result):
                total.exception_info = result.exception_info
            _add_counts(total.result, result.result)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for result in self.merged.results if self.merged is not None else []:
            config = result.expectation_config
            kwargs = config.kwargs
            row = {"expectation": config.type, "column": kwargs.get("column") or ",".join(kwargs.get("column_list", [])),
                   "reason": config.meta.get("reason", config.type), "success": bool(result.success),
                   "unexpected": int(result.result.get("unexpected_count") or 0)}  # fmt: skip
            if _raised(result):
                row["error"] = str(result.exception_info.get("exception_message"))[:200]
            rows.append(row)
        return rows

    def ge_result(self) -> dict[str, Any]:
        if self.merged is None:
            return {}
        results = self.merged.results
        passed = sum(bool(r.success) for r in results)
        self.merged.statistics = {
            "evaluated_expectations": len(results), "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else None,
        }  # fmt: skip
        return {"success": bool(self.merged.success), "statistics": dict(self.merged.statistics)}


_COUNTS = ("element_count", "missing_count", "unexpected_count")


def _raised(result: Any) -> bool:
    """Whether GE could not evaluate the expectation at all (e.g. its column is missing)."""
    return bool(result.exception_info and result.exception_info.get("raised_exception"))


def _summary_counts(result: dict[str, Any]) -> dict[str, Any]:
    """A chunk's COMPLETE result cut to SUMMARY shape: row-level detail lives in the rejected rows, not in GE's JSON."""
    if "unexpected_count" not in result:
        return dict(result)
    summary = {key: result.get(key, 0) or 0 for key in _COUNTS}
    summary["partial_unexpected_list"] = list(result.get("partial_unexpected_list", []))[:_PARTIAL_LIST]
    _percentages(summary)
    return summary


def _add_counts(total: dict[str, Any], result: dict[str, Any]) -> None:
    if "unexpected_count" not in total:
        return
    for key in _COUNTS:
        total[key] += result.get(key, 0) or 0
    room = _PARTIAL_LIST - len(total["partial_unexpected_list"])
    total["partial_unexpected_list"].extend(list(result.get("partial_unexpected_list", []))[: max(room, 0)])
    _percentages(total)


def _percentages(counts: dict[str, Any]) -> None:
    elements, missing, unexpected = counts["element_count"], counts["missing_count"], counts["unexpected_count"]
    counts["missing_percent"] = 100.0 * missing / elements if elements else None
    counts["unexpected_percent"] = 100.0 * unexpected / (elements - missing) if elements - missing else None
    counts["unexpected_percent_total"] = 100.0 * unexpected / elements if elements else None
    counts["unexpected_percent_nonmissing"] = counts["unexpected_percent"]


def _split_chunk(raw: pd.DataFrame, validation: Any, canonical: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """Turns one chunk's failing indices into per-row reasons: (valid rows, rejected rows with `reason`, schema ok)."""
    flagged: list[pd.Series] = []
    schema_ok = True
    for result in validation.results:
        if _raised(result):
            schema_ok = False
            continue
        index = result.result.get("unexpected_index_list")
        if index is None:  # table-level expectation
            schema_ok &= bool(result.success)
            continue
        if not len(index):
            continue
        index = pd.Index(index)
        reason = result.expectation_config.meta["reason"]
        if result.expectation_config.kwargs.get("column") == PARSE_ERROR:
            flagged.append(reason + ": " + raw.loc[index, PARSE_ERROR].astype(str))
        else:
            flagged.append(pd.Series(reason, index=index))
    if not flagged:
        rejected = raw.iloc[:0].assign(**{REASON: pd.Series(dtype="string")})
        valid = raw
    else:
        reasons = pd.concat(flagged).groupby(level=0, sort=True).agg("; ".join)
        is_rejected = raw.index.isin(reasons.index)
        rejected = raw[is_rejected].assign(**{REASON: reasons.astype("string")})
        valid = raw[~is_rejected]
    if schema_ok:
        valid = valid[list(canonical)].astype(canonical)
    return valid, rejected, schema_ok


def _render_docs(name: str, expectations: list[Any], merged: Any, docs_dir: Path) -> str | None:
    """Stores the merged result in a file context under `docs_dir` and renders its Data Docs site."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
    suite_id = ExpectationSuiteIdentifier(name=name)
    run_id = RunIdentifier(run_name=f"{name}-validation", run_time=datetime.datetime.now(datetime.timezone.utc))
    result_id = ValidationResultIdentifier(suite_id, run_id, f"{name}_all_rows")
    context.validation_results_store.store_validation_results(merged, result_id, suite_id)
    context.build_data_docs(resource_identifiers=[result_id, suite_id])
    sites = context.get_docs_sites_urls()
    return sites[0]["site_url"] if sites else None


def _run(
    name: str, expectations: Callable[[], list[Any]], chunks: Iterable[pd.DataFrame], derive: Callable[[pd.DataFrame], pd.DataFrame],
    canonical: dict[str, str], keep: Callable[[pd.DataFrame, pd.DataFrame], None], docs_dir: Path | None, started: float,
) -> ValidationReport:  # fmt: skip
    """Derives, checks and splits every chunk, handing each chunk's valid and rejected rows to `keep`."""
    validator = _ChunkValidator(name, expectations())
    totals = _Totals()
    for chunk in chunks:
        validation = validator.run(derive(chunk))
        valid, rejected, schema_ok = _split_chunk(chunk, validation, canonical)
        totals.schema_ok &= schema_ok
        totals.valid_rows += len(valid)
        totals.rejected_rows += len(rejected)
        keep(valid, rejected)
        totals.add(validation)
    ge_result = totals.ge_result()
    docs = _render_docs(name, expectations(), totals.merged, docs_dir) if docs_dir is not None and totals.merged else None
    return ValidationReport(
        valid_rows=totals.valid_rows, rejected_rows=totals.rejected_rows, expectations=totals.summary(),
        schema_ok=totals.schema_ok, seconds=time.perf_counter() - started, docs_path=docs, ge_result=ge_result,
    )  # fmt: skip


_HASH_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _key_values(frame: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray]:
    """The key columns as float64 (exact for ids and timestamps below 2**53), and which rows have all three."""
    missing = np.full(len(frame), np.nan)
    values = [frame[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in frame else missing for c in RATING_KEY]
    present = ~(np.isnan(values[0]) | np.isnan(values[1]) | np.isnan(values[2]))
    return values, present


def _key_hashes(values: list[np.ndarray]) -> np.ndarray:
    hashes = np.zeros(len(values[0]), dtype=np.uint64)
    for column, multiplier in zip(values, _HASH_MULTIPLIERS):
        hashes ^= column.view(np.uint64) * multiplier
    hashes ^= hashes >> np.uint64(31)
    return hashes


class _RepeatedKeys:
    """Which rows repeat an earlier row's (user, item, timestamp), in two passes that hold 8 bytes per row.

    Pass one hashes every key and keeps the hashes seen twice; pass two compares the real keys of just those rows,
    so a hash collision never rejects a row and the first row of each key stays valid.
    """

    def __init__(self, chunks: RatingChunks) -> None:
        hashes = np.empty(chunks.rows, dtype=np.uint64)
        filled = 0
        for keys in chunks.keys():
            values, present = _key_values(keys)
            chunk_hashes = _key_hashes(values)[present]
            hashes[filled : filled + len(chunk_hashes)] = chunk_hashes
            filled += len(chunk_hashes)
        hashes = hashes[:filled]
        hashes.sort()
        self._candidates = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        self._seen: set[tuple[float, float, float]] = set()

    def first_of_key(self, chunk: pd.DataFrame) -> pd.Series:
        values, present = _key_values(chunk)
        first = np.ones(len(chunk), dtype=bool)
        if len(self._candidates):
            candidates = np.flatnonzero(present & np.isin(_key_hashes(values), self._candidates))
            for position in candidates:
                key = (values[0][position], values[1][position], values[2][position])
                if key in self._seen:
                    first[position] = False
                else:
                    self._seen.add(key)
        flags = pd.Series(first, index=chunk.index)
        return flags if present.all() else flags.astype("boolean").where(present)  # a missing key has its own reason


def _rating_deriver(known_item_ids: np.ndarray, repeats: _RepeatedKeys) -> Callable[[pd.DataFrame], pd.DataFrame]:
    known = pd.Index(np.unique(np.asarray(known_item_ids, dtype=np.int64)))

    def derive(chunk: pd.DataFrame) -> pd.DataFrame:
        derived = {FIRST_OF_KEY: repeats.first_of_key(chunk)}
        if ITEM_ID in chunk:  # without it the schema expectation fails the whole table
            item = chunk[ITEM_ID]
            item_known = item.isin(known)
            derived[ITEM_KNOWN] = item_known.astype("boolean").where(item.notna()) if item.hasnans else item_known
        return chunk.assign(**derived)

    return derive


def _rating_run(
    chunks: RatingChunks, known_item_ids: np.ndarray, rules: RatingRules, docs_dir: Path | None, now: int | None,
    keep: Callable[[pd.DataFrame, pd.DataFrame], None],
) -> ValidationReport:  # fmt: skip
    started = time.perf_counter()
    now = int(time.time()) if now is None else now
    derive = _rating_deriver(known_item_ids, _RepeatedKeys(chunks))
    return _run("ratings", lambda: rating_suite(rules, now), chunks, derive, RATING_DTYPES, keep, docs_dir, started)


class _Collect:
    """Keeps every chunk's valid and rejected rows, for the in-memory API."""

    def __init__(self) -> None:
        self.valid: list[pd.DataFrame] = []
        self.rejected: list[pd.DataFrame] = []

    def __call__(self, valid: pd.DataFrame, rejected: pd.DataFrame) -> None:
        self.valid.append(valid)
        self.rejected.append(rejected)

    def outcome(self, report: ValidationReport) -> ValidationOutcome:
        return ValidationOutcome(
            valid=pd.concat(self.valid, ignore_index=True), rejected=pd.concat(self.rejected, ignore_index=True), report=report
        )


def validate_ratings(
    raw: pd.DataFrame, known_item_ids: np.ndarray, rules: RatingRules = RatingRules(),
    docs_dir: Path | None = None, now: int | None = None, chunk_rows: int = CHUNK_ROWS,
) -> ValidationOutcome:  # fmt: skip
    """Splits raw ratings into validated (canonical dtypes) and rejected (with reasons)."""
    collect = _Collect()
    report = _rating_run(FrameChunks(raw, chunk_rows), known_item_ids, rules, docs_dir, now, collect)
    return collect.outcome(report)


class _ParquetSink:
    """Appends frames to a Parquet file as they come; an empty input still leaves a readable, typed file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._empty: pd.DataFrame | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if self._writer is None and not len(frame):
            self._empty = frame
            return
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))
        pa.default_memory_pool().release_unused()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif self._empty is not None:
            self._empty.to_parquet(self.path, index=False)


def write_validated_ratings(
    chunks: RatingChunks, known_item_ids: np.ndarray, valid_path: Path, rejected_path: Path,
    rules: RatingRules = RatingRules(), docs_dir: Path | None = None, now: int | None = None,
) -> ValidationReport:  # fmt: skip
    """Validates ratings chunk by chunk straight into two Parquet files: memory stays flat at any size.

    A writer thread encodes one chunk while the next is validated (Parquet encoding releases the GIL); at most one
    chunk waits, so memory stays bounded.
    """
    valid_sink, rejected_sink = _ParquetSink(Path(valid_path)), _ParquetSink(Path(rejected_path))
    pending: list[Future] = []

    def write(valid: pd.DataFrame, rejected: pd.DataFrame) -> None:
        valid_sink.write(valid)
        rejected_sink.write(rejected)

    def keep(valid: pd.DataFrame, rejected: pd.DataFrame) -> None:
        if pending:
            pending.pop().result()
        pending.append(writer.submit(write, valid, rejected))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as writer:
        try:
            report = _rating_run(chunks, known_item_ids, rules, docs_dir, now, keep)
            if pending:
                pending.pop().result()
        finally:
            writer.shutdown(wait=True)
            valid_sink.close()
            rejected_sink.close()
    return report


def validate_items(raw: pd.DataFrame, rules: ItemRules = ItemRules(), docs_dir: Path | None = None) -> ValidationOutcome:
    """Splits the raw catalogue into validated items and rejected ones (with reasons); the first of a repeated id stays."""
    started = time.perf_counter()
    frame = raw.reset_index(drop=True)
    ids = frame[ITEM_ID] if ITEM_ID in frame else pd.Series(pd.NA, index=frame.index, dtype="Int64")
    first = ~ids.duplicated(keep="first")
    if ids.hasnans:
        first = first.astype("boolean").where(ids.notna())

    def derive(chunk: pd.DataFrame) -> pd.DataFrame:
        return chunk.assign(**{FIRST_OF_KEY: first})

    collect = _Collect()
    report = _run("items", lambda: item_suite(rules), [frame], derive, ITEM_DTYPES, collect, docs_dir, started)
    return collect.outcome(report)
