"""Live events landed for validation and retraining: one partition per UTC hour of server receive time.

An event belongs to the window holding its `received_at`, which the store makes monotonic in commit order, so once a
window has closed (plus a grace period) no event can join it and its partition is final: every acknowledged event lands
in exactly one partition (`event_window_sensor` adds and launches each closed window once). The windows are dynamic
partitions named by their hour ("2026-11-25-14:00"): only hours that had events exist, so validation, which reads every
landed window, never walks thousands of empty hours.
"""

import pandas as pd
from dagster import AssetExecutionContext, DynamicPartitionsDefinition, MetadataValue, Output, asset

from recsys_core.events.feedback import events_frame, window_bounds
from recsys_dagster.metadata import table
from recsys_dagster.resources.event_store import EventStoreResource

event_windows = DynamicPartitionsDefinition(name="event_windows")


@asset(partitions_def=event_windows, kinds={"pandas", "parquet"})
def landed_events(context: AssetExecutionContext, event_store: EventStoreResource) -> Output[pd.DataFrame]:
    """Every event the store acknowledged in this window (impressions too: the A/B analysis reads them), with the
    rating each maps to (`rating`, NaN for none); validation takes the rated ones like any other rating source."""
    start, end = window_bounds(context.partition_key)
    store = event_store.open()
    try:
        frame = events_frame(store.read_received(start, end), event_store.mapping())
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
