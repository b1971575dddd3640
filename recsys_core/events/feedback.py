"""Events back into the pipeline and into the user tower: which event types count as ratings, and with what value.

Explicit `rating` events keep their value; implicit positives (click, purchase) get a configured rating; impressions and
views become no rating (they stay in the store for the A/B work). The same mapping feeds the live history that serving
hands the attention tower, so what the model sees online is what it is retrained on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys_core.events.schema import Event
from recsys_core.events.store import EventStore
from recsys_core.ingestion import PARSE_ERROR, SOURCE_LINE
from recsys_core.schema import RATING_DTYPES

WINDOW_S = 3600  # landed event windows are UTC hours
WINDOW_FORMAT = "%Y-%m-%d-%H:00"
EVENT_COLUMNS = ["seq", "event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id", "received_at", "payload"]


@dataclass(frozen=True)
class EventMapping:
    explicit: tuple[str, ...] = ("rating",)
    implicit: dict[str, float] = field(default_factory=lambda: {"click": 4.0, "purchase": 5.0})

    @property
    def rated_types(self) -> tuple[str, ...]:
        return (*self.explicit, *self.implicit)

    def rating(self, event_type: str, value: float | None) -> float | None:
        if event_type in self.explicit:
            return value
        return self.implicit.get(event_type)

    def history(self, events: list[Event]) -> tuple[list[int], list[float]]:
        """(item ids, ratings) of the events that count as ratings, in the given order."""
        pairs = [(e.item_id, self.rating(e.type, e.value)) for e in events]
        kept = [(item, float(r)) for item, r in pairs if r is not None]
        return [item for item, _ in kept], [r for _, r in kept]


def events_frame(events: list[Event], mapping: EventMapping) -> pd.DataFrame:
    """Events as stored (every type, impressions included), in seq order, with the `rating` they map to (or NaN)."""
    frame = pd.DataFrame([[getattr(e, c) for c in EVENT_COLUMNS] for e in events], columns=EVENT_COLUMNS)
    frame["rating"] = [np.nan if (r := mapping.rating(e.type, e.value)) is None else r for e in events]
    return frame.astype({"seq": "int64", "user_id": "int64", "item_id": "int64", "value": "float64", "timestamp": "float64",
                         "received_at": "float64", "event_id": "string", "type": "string", "request_id": "string",
                         "payload": "string", "rating": "float64"})  # fmt: skip


def events_to_ratings(frame: pd.DataFrame) -> pd.DataFrame:
    """The rated events as raw rating rows (canonical columns + `parse_error`, `source_line` = the event's seq)."""
    rated = frame[frame["rating"].notna()]
    out = pd.DataFrame({
        "user_id": rated["user_id"], "item_id": rated["item_id"], "rating": rated["rating"],
        "timestamp": np.floor(rated["timestamp"].to_numpy(np.float64)).astype(np.int64),
        PARSE_ERROR: pd.Series([None] * len(rated), dtype="string", index=rated.index), SOURCE_LINE: rated["seq"],
    })  # fmt: skip
    return out.astype(RATING_DTYPES).reset_index(drop=True)


def window_key(received_at: float) -> str:
    """The UTC hour holding `received_at`, as a partition key ("2026-11-25-14:00")."""
    start = int(received_at // WINDOW_S) * WINDOW_S
    return dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime(WINDOW_FORMAT)


def window_bounds(key: str) -> tuple[float, float]:
    """[start, end) in unix seconds of a window key; ValueError names a malformed key."""
    start = dt.datetime.strptime(key, WINDOW_FORMAT).replace(tzinfo=dt.timezone.utc).timestamp()
    return start, start + WINDOW_S


def closed_windows(store: EventStore, after: int, now: float, grace_s: float = 60.0) -> tuple[dict[str, int], int]:
    """Events per window (in order) after seq `after`, for the windows that closed more than `grace_s` before `now`, and
    the seq of the last of them: a consumer's next cursor. `received_at` grows with seq, so the first event of a
    window still open ends the scan and no later event can join a window already returned."""
    windows: dict[str, int] = {}
    while page := store.read(after, 10_000):
        for event in page:
            key = window_key(event.received_at)
            if window_bounds(key)[1] > now - grace_s:
                return windows, after
            windows[key] = windows.get(key, 0) + 1
            after = event.seq
    return windows, after
