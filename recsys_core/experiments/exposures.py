"""Exposures as events in the event store: one `exposure` event per shown item, so the store's ordering, durability
and idempotency carry experiment traffic too, and the online report reads it back as `attribution`'s exposure rows.

The store's schema has no free-form column, so an exposure's experiment, arm, model version, latency and fallback
flag travel in its `event_id`, which is unique per (request_id, rank) anyway: `exposure|<rank>|<json list>`. Its
`value` is the rank. `exposure` is not a type clients may post (`EventRules.types`), so only the service writes them.
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

    def events(self) -> list[Event]:
        """One event per shown item (rank 1 first)."""
        context = json.dumps([self.experiment, self.arm, self.model_version, self.request_id, round(self.latency_ms, 3),
                              self.fallback], separators=(",", ":"))  # fmt: skip
        return [Event(f"{PREFIX}{rank}|{context}", int(self.user_id), int(item), EXPOSURE, self.timestamp, float(rank),
                      self.request_id) for rank, item in enumerate(self.item_ids, start=1)]  # fmt: skip


def exposures_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Exposure events as rows in `attribution`'s columns plus experiment, model_version, latency_ms, fallback."""
    rows = []
    for e in events:
        if e.type != EXPOSURE or not e.event_id.startswith(PREFIX):
            continue
        rank, context = e.event_id[len(PREFIX) :].split("|", 1)
        experiment, arm, version, request_id, latency_ms, fallback = json.loads(context)
        rows.append((request_id, e.user_id, arm, e.item_id, int(rank), e.timestamp, experiment, version, latency_ms, fallback))
    return pd.DataFrame(rows, columns=[*EXPOSURE_COLUMNS, *EXTRA_COLUMNS])


def clicks_frame(events: Iterable[Event], types: Sequence[str] = ("click",)) -> pd.DataFrame:
    """Positive events (clicks by default) in `attribution`'s click columns, with their request_id when given."""
    rows = [(e.user_id, e.item_id, e.timestamp, e.request_id) for e in events if e.type in types]
    return pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, TIMESTAMP, REQUEST_ID])


