"""Ingestion: ratings and the item catalogue as read from the data source, bad rows included."""


import pandas as pd
from dagster import AssetExecutionContext, Backoff, Config, DynamicPartitionsDefinition, MetadataValue, Output, RetryPolicy, asset
from pydantic import Field

from recsys_core.events import EventMapping, EventStore, open_store
from recsys_core.events.feedback import events_frame, window_bounds
from recsys_core.ingestion import PARSE_ERROR
from recsys_core.landing import read_landed_file
from recsys_dagster.metadata import table
from recsys_dagster.resources.data_source import DataSourceResource

# Downloads can fail transiently; reading local files twice is harmless.
NETWORK_RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL)

# One partition per file dropped into the landing folder; the sensor adds them.
rating_drops = DynamicPartitionsDefinition(name="rating_drops")
# Live events: one partition per UTC hour of server receive time that had events ("2026-11-25-14:00"); dynamic, so
# validation, which reads every landed window, never walks thousands of empty hours.
event_windows = DynamicPartitionsDefinition(name="event_windows")


class EventStoreConfig(Config):
    """The live event store (empty url: $RECSYS_EVENT_STORE, else SQLite under $RECSYS_HOME) and the event -> rating map."""

    url: str = ""
    explicit_types: list[str] = Field(["rating"], description="event types whose `value` is the rating")
    implicit_ratings: dict[str, float] = Field({"click": 4.0, "purchase": 5.0},
                                               description="implicit positives and the rating each becomes")  # fmt: skip

    def mapping(self) -> EventMapping:
        return EventMapping(tuple(self.explicit_types), dict(self.implicit_ratings))

    def open(self) -> EventStore:
        return open_store(self.url, history_types=self.mapping().rated_types)


def rating_summary(ratings: pd.DataFrame) -> dict[str, MetadataValue]:
    histogram = ratings["rating"].value_counts(dropna=False).sort_index().rename_axis("rating").reset_index(name="rows")
    timestamps = pd.to_datetime(ratings["timestamp"].dropna(), unit="s")
    return {
        "rows": MetadataValue.int(len(ratings)),
        "users": MetadataValue.int(int(ratings["user_id"].nunique())),
        "items": MetadataValue.int(int(ratings["item_id"].nunique())),
        "rating_histogram": table(histogram),
        "time_span": MetadataValue.text(f"{timestamps.min()} .. {timestamps.max()}" if len(timestamps) else "empty"),
        "preview": table(ratings, 10),
    }


@asset(retry_policy=NETWORK_RETRY, kinds={"pandas", "parquet"})
def raw_ratings(context: AssetExecutionContext, data_source: DataSourceResource) -> Output[pd.DataFrame]:
    """Every rating row of the source as read, unreadable rows kept with `parse_error` for validation to quarantine."""
    spec = data_source.spec()
    frame = spec.read_raw_ratings()
    context.log.info("read %d rating rows from %s", len(frame), spec.describe())
    metadata = rating_summary(frame)
    metadata["source"] = MetadataValue.text(spec.describe())
    metadata["unreadable_rows"] = MetadataValue.int(int(frame[PARSE_ERROR].notna().sum()))
    return Output(frame, metadata=metadata)


@asset(retry_policy=NETWORK_RETRY, kinds={"pandas", "parquet"})
def raw_items(context: AssetExecutionContext, data_source: DataSourceResource) -> Output[pd.DataFrame]:
    """The item catalogue (title, genres, year, text) as read, unreadable rows kept with `parse_error`."""
    spec = data_source.spec()
    frame = spec.read_raw_items()
    genres = frame["genres"].dropna().str.split("|").explode().value_counts().rename_axis("genre").reset_index(name="items")
    return Output(
        frame,
        metadata={
            "rows": MetadataValue.int(len(frame)),
            "source": MetadataValue.text(spec.describe()),
            "unreadable_rows": MetadataValue.int(int(frame[PARSE_ERROR].notna().sum())),
            "genres": table(genres),
            "preview": table(frame, 10),
        },
    )


@asset(partitions_def=rating_drops, kinds={"pandas", "parquet"})
def landed_ratings(context: AssetExecutionContext, data_source: DataSourceResource) -> Output[pd.DataFrame]:
    """One rating drop from the landing folder (canonical CSV or Parquet), appended to the source's ratings."""
    folder = data_source.landing_path()
    frame = read_landed_file(folder, context.partition_key)
    metadata = rating_summary(frame)
    metadata["file"] = MetadataValue.path(str(folder / context.partition_key))
    metadata["unreadable_rows"] = MetadataValue.int(int(frame[PARSE_ERROR].notna().sum()))
    return Output(frame, metadata=metadata)


@asset(partitions_def=event_windows, kinds={"pandas", "parquet"})
def landed_events(context: AssetExecutionContext, config: EventStoreConfig) -> Output[pd.DataFrame]:
    """Every event the store acknowledged in this window (impressions too: the A/B analysis reads them), with the
    rating each maps to (`rating`, NaN for none); validation takes the rated ones like any other rating source.

    An event belongs to the window holding its `received_at`, which the store makes monotonic in commit order, so once
    a window has closed (plus a grace period) no event can join it: `event_window_sensor` adds and launches each closed
    window once, and every acknowledged event lands in exactly one partition."""
    start, end = window_bounds(context.partition_key)
    store = config.open()
    try:
        frame = events_frame(store.read_received(start, end), config.mapping())
        source = store.describe()
    finally:
        store.close()
    per_type = (
        frame.groupby("type", observed=True)
        .agg(events=("event_id", "size"), users=("user_id", "nunique"), rated=("rating", "count"))
        .reset_index()
    )
    context.log.info("window %s: %d events from %s", context.partition_key, len(frame), source)
    return Output(frame, metadata={
        "rows": MetadataValue.int(len(frame)), "rated_rows": MetadataValue.int(int(frame["rating"].notna().sum())),
        "users": MetadataValue.int(int(frame["user_id"].nunique())), "events_per_type": table(per_type),
        "store": MetadataValue.text(source), "preview": table(frame, 10),
        "seq_range": MetadataValue.text(f"{frame['seq'].min()}..{frame['seq'].max()}" if len(frame) else "empty"),
    })  # fmt: skip
