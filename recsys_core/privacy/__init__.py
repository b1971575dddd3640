"""Forgetting users: tombstones that validation and serving honour, deletion from the event store, an audit log."""

from recsys_core.privacy.forget import drop_forgotten, forget_user, forgotten_in_bundle, forgotten_in_frame
from recsys_core.privacy.tombstones import AuditRecord, Tombstones, default_privacy_path

__all__ = ["AuditRecord", "Tombstones", "default_privacy_path", "drop_forgotten", "forget_user", "forgotten_in_bundle",
           "forgotten_in_frame"]
