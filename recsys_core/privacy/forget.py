"""Forgetting a user: tombstone first (so validation and serving stop using them at once), then delete what is
stored live, then record what was removed in the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.events import EventStore
from recsys_core.privacy.tombstones import AuditRecord, Tombstones
from recsys_core.schema import USER_ID, USER_IDS_FILE


def forget_user(
    user_id: int, actor: str, tombstones: Tombstones, store: EventStore | None = None, elsewhere: Mapping[str, int] | None = None
) -> AuditRecord:
    """Idempotent: forgetting again removes what arrived since and adds another audit record. `elsewhere` adds the
    caller's own counts to the record (the service: whether the served model held the user)."""
    tombstones.add(user_id, actor)
    removed = {"event_store_events": store.forget_user(user_id) if store is not None else 0, **(elsewhere or {})}
    return tombstones.record(user_id, actor, removed)


def drop_forgotten(frame: pd.DataFrame, users: frozenset[int]) -> tuple[pd.DataFrame, int]:
    """The rows of `frame` whose user is not tombstoned, and how many were dropped (unreadable ids are kept for
    validation to reject: they name no user)."""
    if not users or frame.empty:
        return frame, 0
    forgotten = frame[USER_ID].isin(list(users)).fillna(False).to_numpy(dtype=bool)
    return (frame[~forgotten].reset_index(drop=True), int(forgotten.sum())) if forgotten.any() else (frame, 0)


def forgotten_in_bundle(directory: str | Path, users: frozenset[int]) -> list[int]:
    """Tombstoned users that a model directory (PyTorch bundle or ONNX serving folder) still maps to an embedding,
    a history and seen items: all three are indexed through its `user_ids.npy`."""
    if not users:
        return []
    ids = np.load(Path(directory) / USER_IDS_FILE)
    return sorted(int(u) for u in np.intersect1d(ids.astype(np.int64), np.fromiter(users, np.int64, len(users))))


def forgotten_in_frame(frame: pd.DataFrame, users: frozenset[int]) -> list[int]:
    return sorted(int(u) for u in set(frame[USER_ID].dropna().unique().tolist()) & users) if users else []
