"""The live event store as a Dagster resource: SQLite under $RECSYS_HOME by default (offline), Redis by URL."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from recsys_core.events import EventMapping, EventStore, open_store


class EventStoreResource(ConfigurableResource):
    """`url`: empty = $RECSYS_EVENT_STORE, else sqlite under $RECSYS_HOME; or `redis://host:port/db`."""

    url: str = ""
    explicit_types: list[str] = Field(["rating"], description="event types whose `value` is the rating")
    implicit_ratings: dict[str, float] = Field({"click": 4.0, "purchase": 5.0},
                                               description="implicit positives and the rating each becomes")  # fmt: skip

    def mapping(self) -> EventMapping:
        return EventMapping(tuple(self.explicit_types), dict(self.implicit_ratings))

    def open(self) -> EventStore:
        return open_store(self.url, history_types=self.mapping().rated_types)
