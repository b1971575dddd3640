"""Forget a user: remove their live events, tombstone them for validation and serving, record it in the audit log.

A running service reads the tombstones again within 10 s and at every model swap; `DELETE /admin/users/{user_id}` on
the service takes effect at once. The next retrain (`retrain_on_forget` requests one) holds nothing of the user.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys

from recsys_core.events import open_store
from recsys_core.privacy.forget import forget_user
from recsys_core.privacy.tombstones import Tombstones
from recsys_core.schema import MAX_ID


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", type=int)
    parser.add_argument("--event-store", default="", help="sqlite:///PATH or redis://HOST:PORT/DB; default "
                        "$RECSYS_EVENT_STORE, else SQLite at $RECSYS_HOME/events.sqlite; 'off': no event store")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.user_id <= MAX_ID:
        print(f"recsys forget-user: user_id {args.user_id} is not in [0, 2^63)", file=sys.stderr)
        return 2
    store = None if args.event_store == "off" else open_store(args.event_store)
    try:
        record = forget_user(args.user_id, f"cli:{getpass.getuser()}", Tombstones(), store)
    finally:
        if store is not None:
            store.close()
    print(json.dumps(dataclasses.asdict(record)))
    return 0
