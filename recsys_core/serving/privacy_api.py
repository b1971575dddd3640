"""`DELETE /admin/users/{user_id}` (scope `admin`): forget a user now, and the tombstones every request honours.

The served bundle may still hold the user (until the next retrain): the service answers them as it answers a
stranger (popular items, no stored history, no live events). Tombstones are read at start, after every model swap
(a hot reload to an older bundle still containing the user keeps honouring them) and every `refresh_s` seconds (a
`recsys forget-user` run beside the service); a forget through this endpoint applies at once.
"""

from __future__ import annotations

import threading
import time

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from recsys_core.events import EventStore
from recsys_core.privacy import Tombstones, forget_user
from recsys_core.schema import MAX_ID
from recsys_core.serving.auth import ApiKeys
from recsys_core.serving.errors import KEYED_RESPONSES
from recsys_core.serving.reload import ModelHolder


class ForgetResponse(BaseModel):
    user_id: int
    actor: str
    at: float
    audit_seq: int
    removed: dict[str, int]


class ForgottenUsers:
    """The tombstoned user ids, cached; `contains` re-reads them when the served model changed or `refresh_s` passed."""

    def __init__(self, tombstones: Tombstones, holder: ModelHolder, refresh_s: float = 10.0) -> None:
        self.tombstones, self.holder, self.refresh_s = tombstones, holder, refresh_s
        self._lock = threading.Lock()
        self._refresh()

    def _refresh(self) -> None:
        with self._lock:  # read under the lock, so an `add` never lands between a read and its assignment
            self._token, self._users, self._read_at = self.holder.current.token, self.tombstones.users(), time.monotonic()

    def contains(self, user_id: int | None) -> bool:
        if self._token != self.holder.current.token or time.monotonic() - self._read_at > self.refresh_s:
            self._refresh()
        return user_id is not None and user_id in self._users

    def add(self, user_id: int) -> None:
        with self._lock:
            self._users = self._users | {user_id}


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
