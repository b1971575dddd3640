"""Exposures as events in the event store: one `exposure` event per experiment response, so the store's ordering,
durability and idempotency carry experiment traffic too, and the online report reads it back as `attribution`'s
exposure rows (one per shown item, with its rank).

The event's columns hold the user, the request_id, the server time, the top item (`item_id`) and the number shown
(`value`); its `payload` holds the experiment, arm, model version, latency, fallback flag and shown items (in rank
order). Its `event_id` is `exposure-<hash of all that>`: unique per response, and the same on a retried append. One
event per response, not per item: the log's appends cost per event, and the request path shares the interpreter with
them. `exposure` is not a type clients may post (`EventRules.types`), so only the service writes them.

Exposures logged before events had a payload packed it into the `event_id` (`exposure|<json list>`). The log is
append-only and its ids are idempotency keys (and, on Redis, stream entries cannot be rewritten in place), so those
rows are not migrated: `exposures_frame` reads both forms.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from recsys_core.events.schema import Event
from recsys_core.experiments.attribution import EXPOSURE_COLUMNS, REQUEST_ID, TIMESTAMP
from recsys_core.schema import ITEM_ID, USER_ID

EXPOSURE = "exposure"
LEGACY_PREFIX = "exposure|"  # the packed form, read but no longer written
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
        payload = json.dumps({EXPERIMENT: self.experiment, "arm": self.arm, "model_version": self.model_version,
                              "latency_ms": round(self.latency_ms, 3), "fallback": self.fallback,
                              "items": [int(i) for i in self.item_ids]}, separators=(",", ":"))  # fmt: skip
        identity = json.dumps([self.request_id, self.user_id, self.timestamp, payload]).encode()
        return Event(f"{EXPOSURE}-{hashlib.blake2b(identity, digest_size=16).hexdigest()}", int(self.user_id),
                     int(self.item_ids[0]) if len(self.item_ids) else 0, EXPOSURE, self.timestamp,
                     float(len(self.item_ids)), self.request_id, payload=payload)  # fmt: skip


def _exposure_fields(event: Event) -> tuple[str, str, str, str, float, bool, list[int]] | None:
    """(experiment, arm, model_version, request_id, latency_ms, fallback, items) of an exposure event in either form."""
    if event.payload is not None:
        p = json.loads(event.payload)
        return p[EXPERIMENT], p["arm"], p["model_version"], event.request_id, p["latency_ms"], p["fallback"], p["items"]
    if event.event_id.startswith(LEGACY_PREFIX):
        experiment, arm, version, request_id, _, latency_ms, fallback, items = json.loads(event.event_id[len(LEGACY_PREFIX) :])
        return experiment, arm, version, request_id, latency_ms, fallback, items
    return None


def exposures_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Exposure events (payload or legacy packed form) as rows in `attribution`'s columns plus experiment,
    model_version, latency_ms, fallback."""
    rows = []
    for e in events:
        fields = _exposure_fields(e) if e.type == EXPOSURE else None
        if fields is None:
            continue
        experiment, arm, version, request_id, latency_ms, fallback, items = fields
        rows += [(request_id, e.user_id, arm, item, rank, e.timestamp, experiment, version, latency_ms, fallback)
                 for rank, item in enumerate(items, start=1)]  # fmt: skip
    return pd.DataFrame(rows, columns=[*EXPOSURE_COLUMNS, *EXTRA_COLUMNS])


def clicks_frame(events: Iterable[Event], types: Sequence[str] = ("click",)) -> pd.DataFrame:
    """Positive events (clicks by default) in `attribution`'s click columns, with their request_id when given."""
    rows = [(e.user_id, e.item_id, e.timestamp, e.request_id) for e in events if e.type in types]
    return pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, TIMESTAMP, REQUEST_ID])


