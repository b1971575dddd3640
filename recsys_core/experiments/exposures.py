"""Exposures as events in the event store: one `exposure` event per shown item, so the store's ordering, durability
and idempotency carry experiment traffic too, and the online report reads it back as `attribution`'s exposure rows.

The store's schema has no free-form column, so an exposure's experiment, arm, model version, latency and fallback
flag travel in its `event_id`, which is unique per (request_id, rank) anyway: `exposure|<json list>`. Its `value` is
the rank. `exposure` is not a type clients may post (`EventRules.types`), so only the service writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pandas as pd

from recsys_core.events.schema import Event
from recsys_core.experiments.attribution import EXPOSURE_COLUMNS, REQUEST_ID, TIMESTAMP
from recsys_core.schema import ITEM_ID, USER_ID

EXPOSURE = "exposure"
PREFIX = "exposure|"
EXPERIMENT = "experiment"
EXTRA_COLUMNS = (EXPERIMENT, "model_version", "latency_ms", "fallback")


def exposure_events(
    experiment: str, arm: str, model_version: str, request_id: str, user_id: int, item_ids: Sequence[int],
    timestamp: float, latency_ms: float, fallback: bool,
) -> list[Event]:  # fmt: skip
    """One response, one event per shown item (rank 1 first)."""
    return [
        Event(PREFIX + json.dumps([experiment, arm, model_version, request_id, rank, round(latency_ms, 3), fallback],
                                  separators=(",", ":")),
              int(user_id), int(item), EXPOSURE, timestamp, float(rank), request_id)
        for rank, item in enumerate(item_ids, start=1)
    ]  # fmt: skip


def exposures_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Exposure events as rows in `attribution`'s columns plus experiment, model_version, latency_ms, fallback."""
    rows = []
    for e in events:
        if e.type != EXPOSURE or not e.event_id.startswith(PREFIX):
            continue
        experiment, arm, version, request_id, rank, latency_ms, fallback = json.loads(e.event_id[len(PREFIX):])
        rows.append((request_id, e.user_id, arm, e.item_id, rank, e.timestamp, experiment, version, latency_ms, fallback))
    return pd.DataFrame(rows, columns=[*EXPOSURE_COLUMNS, *EXTRA_COLUMNS])


def clicks_frame(events: Iterable[Event], types: Sequence[str] = ("click",)) -> pd.DataFrame:
    """Positive events (clicks by default) in `attribution`'s click columns, with their request_id when given."""
    rows = [(e.user_id, e.item_id, e.timestamp, e.request_id) for e in events if e.type in types]
    return pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, TIMESTAMP, REQUEST_ID])


