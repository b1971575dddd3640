"""`DELETE /admin/users/{user_id}` (scope `admin`): forget a user now, and the tombstones every request honours.

The served bundle may still hold the user (until the next retrain): the service answers them as it answers a
stranger (popular items, no stored history, no live events). Requests only look the user up in a set held in
memory; the tombstone file is read at start and then on the model reloader's poll thread, right after each check of
the model source (so after every swap too), which picks up a `recsys forget-user` run beside the service within one
poll interval. Without a polling reloader, a poller of its own reads it every `refresh_s`. A forget through this
endpoint applies at once.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from recsys_core.events import EventStore
from recsys_core.privacy import Tombstones, forget_user
from recsys_core.schema import MAX_ID
from recsys_core.serving.auth import ApiKeys
from recsys_core.serving.errors import KEYED_RESPONSES
from recsys_core.serving.reload import ModelHolder, Poller, Reloader

log = logging.getLogger(__name__)


class ForgetResponse(BaseModel):
    user_id: int
    actor: str
    at: float
    audit_seq: int
    removed: dict[str, int]


class ForgottenUsers:
    """The tombstoned user ids, held in memory: `contains` (the request path) never reads the file, `refresh` does."""

    def __init__(self, tombstones: Tombstones, holder: ModelHolder, refresh_s: float = 10.0) -> None:
        self.tombstones, self.holder, self.refresh_s = tombstones, holder, refresh_s
        self._lock = threading.Lock()
        self._users = tombstones.users()  # at start an unreadable file fails the service: it must not serve the forgotten

    def refresh(self) -> None:
        """Re-reads the tombstones; when the file cannot be read now, keeps the ones held and tries at the next poll."""
        with self._lock:  # read under the lock, so an `add` never lands between a read and its assignment
            try:
                self._users = self.tombstones.users()
            except Exception:
                log.exception("tombstones %s not readable; keeping the %d held", self.tombstones.path, len(self._users))

    def contains(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self._users

    def add(self, user_id: int) -> None:
        with self._lock:
            self._users = self._users | {user_id}


def poll_tombstones(forgotten: ForgottenUsers, reloader: Reloader | None) -> Poller | None:
    """Puts `forgotten.refresh` on the reloader's poller when it polls; else -> a poller of its own (every
    `refresh_s`), for the caller to start and stop with the service."""
    if reloader is not None and reloader.poller.interval_s > 0:
        reloader.poller.add(forgotten.refresh)
        return None
    return Poller(forgotten.refresh, forgotten.refresh_s, "recsys-tombstones")


def privacy_router(forgotten: ForgottenUsers, keys: ApiKeys, store: EventStore | None) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.delete("/admin/users/{user_id}", response_model=ForgetResponse, responses=KEYED_RESPONSES)
    def forget(user_id: int = Path(ge=0, le=MAX_ID), key=Depends(keys.require("admin"))) -> ForgetResponse:  # noqa: ANN001, B008
        """Removes the user's live events, tombstones them for validation and serving, and records it in the audit log."""
        held = int(forgotten.holder.current.scorer.users.contains([user_id])[0])  # masked now, gone at the retrain
        record = forget_user(user_id, f"key:{key.name}", forgotten.tombstones, store, {"served_model_masked": held})
        forgotten.add(user_id)
        return ForgetResponse(user_id=user_id, actor=record.actor, at=record.at, audit_seq=record.seq, removed=record.removed)

    return router
