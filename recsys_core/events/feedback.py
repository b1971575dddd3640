"""Events back into the pipeline and into the user tower: which event types count as ratings, and with what value.

Explicit `rating` events keep their value; implicit positives (click, purchase) get a configured rating; impressions and
views become no rating (they stay in the store for the A/B work). The same mapping feeds the live history that serving
hands the attention tower, so what the model sees online is what it is retrained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys_core.events.schema import Event
from recsys_core.ingestion import PARSE_ERROR, SOURCE_LINE
from recsys_core.schema import RATING_DTYPES

EVENT_COLUMNS = ["seq", "event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id", "received_at"]


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


def events_frame(events: list[Event]) -> pd.DataFrame:
    """Events as stored (every type, impressions included), in seq order."""
    frame = pd.DataFrame([[getattr(e, c) for c in EVENT_COLUMNS] for e in events], columns=EVENT_COLUMNS)
    return frame.astype({"seq": "int64", "user_id": "int64", "item_id": "int64", "value": "float64", "timestamp": "float64",
                         "received_at": "float64", "event_id": "string", "type": "string", "request_id": "string"})  # fmt: skip


def events_to_ratings(frame: pd.DataFrame, mapping: EventMapping) -> pd.DataFrame:
    """Raw rating rows (the canonical columns + `parse_error`, `source_line` = the event's seq) for validation."""
    values = [mapping.rating(t, v if pd.notna(v) else None) for t, v in zip(frame["type"], frame["value"])]
    rated = frame.assign(rating=[np.nan if v is None else v for v in values])[[v is not None for v in values]]
    out = pd.DataFrame({
        "user_id": rated["user_id"], "item_id": rated["item_id"], "rating": rated["rating"],
        "timestamp": np.floor(rated["timestamp"].to_numpy(np.float64)).astype(np.int64),
        PARSE_ERROR: pd.Series([None] * len(rated), dtype="string", index=rated.index), SOURCE_LINE: rated["seq"],
    })  # fmt: skip
    return out.astype(RATING_DTYPES).reset_index(drop=True)
