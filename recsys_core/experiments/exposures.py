"""Exposures as events in the event store: one `exposure` event per experiment response, so the store's ordering,
durability and idempotency carry experiment traffic too, and the online report reads it back as `attribution`'s
exposure rows (one per shown item, with its rank).

The store's schema has no free-form column, so the response's experiment, arm, model version, request_id, server
time, latency, fallback flag and shown items (in rank order) travel in its `event_id`: `exposure|<json list>`, unique
per response. Its `item_id` is the top item, its `value` the number shown. One event per response, not per item:
the log's appends cost per event, and the request path shares the interpreter with them. `exposure` is not a type
clients may post (`EventRules.types`), so only the service writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from recsys_core.events.schema import Event
from recsys_core.experiments.attribution import EXPOSURE_COLUMNS, REQUEST_ID, TIMESTAMP
from recsys_core.schema import ITEM_ID, USER_ID

EXPOSURE = "exposure"
PREFIX = "exposure|"
EXPERIMENT = "experiment"
EXTRA_COLUMNS = (EXPERIMENT, "model_version", "latency_ms", "fallback")


@dataclass(frozen=True)
class Exposure:
    """One experiment response as the request path hands it over: cheap to make; `events()` runs off the request path."""

    experiment: str
    arm: str
    model_version: str
    request_id: str
    user_id: int
    item_ids: Sequence[int]
    timestamp: float
    latency_ms: float
    fallback: bool

    def event(self) -> Event:
        context = [self.experiment, self.arm, self.model_version, self.request_id, self.timestamp, round(self.latency_ms, 3),
                   self.fallback, [int(i) for i in self.item_ids]]  # fmt: skip
        return Event(PREFIX + json.dumps(context, separators=(",", ":")), int(self.user_id),
                     int(self.item_ids[0]) if len(self.item_ids) else 0, EXPOSURE, self.timestamp,
                     float(len(self.item_ids)), self.request_id)  # fmt: skip


def exposures_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Exposure events as rows in `attribution`'s columns plus experiment, model_version, latency_ms, fallback."""
    rows = []
    for e in events:
        if e.type != EXPOSURE or not e.event_id.startswith(PREFIX):
            continue
        experiment, arm, version, request_id, _, latency_ms, fallback, items = json.loads(e.event_id[len(PREFIX) :])
        rows += [(request_id, e.user_id, arm, item, rank, e.timestamp, experiment, version, latency_ms, fallback)
                 for rank, item in enumerate(items, start=1)]  # fmt: skip
    return pd.DataFrame(rows, columns=[*EXPOSURE_COLUMNS, *EXTRA_COLUMNS])


def clicks_frame(events: Iterable[Event], types: Sequence[str] = ("click",)) -> pd.DataFrame:
    """Positive events (clicks by default) in `attribution`'s click columns, with their request_id when given."""
    rows = [(e.user_id, e.item_id, e.timestamp, e.request_id) for e in events if e.type in types]
    return pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, TIMESTAMP, REQUEST_ID])


