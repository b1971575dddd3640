"""Live events: the schema and batch check, one store interface with SQLite (default) and Redis backends, and the
event -> rating mapping. Serving writes and reads it; the Dagster `landed_events` asset lands it for retraining."""

from recsys_core.events.feedback import EventMapping, events_frame, events_to_ratings
from recsys_core.events.schema import BatchError, Event, EventRules, parse_batch
from recsys_core.events.store import AppendResult, EventStore, default_store_url, open_store

__all__ = [
    "AppendResult", "BatchError", "Event", "EventMapping", "EventRules", "EventStore", "default_store_url", "events_frame",
    "events_to_ratings", "open_store", "parse_batch",
]  # fmt: skip
