"""API keys with scopes (`read`, `write`, `admin`), as a small FastAPI dependency other routes (and rate limits) reuse.

Keys are configured as SHA-256 hashes only, in a JSON file named by `$RECSYS_API_KEYS_FILE` (or `recsys serve
--api-keys`): `{"read_requires_key": false, "keys": [{"name": "ingest", "sha256": "<hex>", "scopes": ["write"]}]}`.
Make a hash with `printf %s "$KEY" | sha256sum`. A key is presented as `Authorization: Bearer <key>` or `X-API-Key`;
the clear key is hashed on arrival and never stored or logged (logs name the key's `name`). Write and admin routes
always need a key; read routes only when `read_requires_key`. Missing or unknown key: 401; known key, wrong scope: 403.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
ENV_VAR = "RECSYS_API_KEYS_FILE"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ApiKeys:
    """Key hashes -> (name, scopes). No keys configured: every write is refused (401), reads stay open."""

    by_hash: dict[str, ApiKey] = field(default_factory=dict)
    read_requires_key: bool = False

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """Reads and checks the keys file; a malformed entry is a ValueError naming the file and the entry."""
        config = json.loads(Path(path).read_text())
        by_hash = {}
        for i, entry in enumerate(config.get("keys", [])):
            digest, scopes = str(entry.get("sha256", "")).lower(), frozenset(entry.get("scopes", []))
            if not _HEX64.match(digest) or not scopes or not scopes <= set(SCOPES) or not entry.get("name"):
                raise ValueError(f"{path}: keys[{i}] needs a name, a 64-hex-digit sha256 and scopes from {list(SCOPES)}")
            by_hash[digest] = ApiKey(str(entry["name"]), scopes)
        return cls(by_hash, bool(config.get("read_requires_key", False)))

    @classmethod
    def from_env(cls, path: str = "") -> ApiKeys:
        path = path or os.environ.get(ENV_VAR, "")
        return cls.from_file(path) if path else cls()

    def identify(self, request: Request) -> ApiKey | None:
        """The key presented with the request (None when none was); 401 for a key that is not configured."""
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not presented:
            return None
        key = self.by_hash.get(hash_key(presented))
        if key is None:
            log.warning("refused an unknown API key on %s %s", request.method, request.url.path)
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return key

    def require(self, scope: str) -> Callable[[Request], ApiKey | None]:
        """A FastAPI dependency: the caller's key, checked for `scope` (reads pass unkeyed unless configured)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; expected one of {list(SCOPES)}")

        def dependency(request: Request) -> ApiKey | None:
            key = self.identify(request)
            if key is None:
                if scope == "read" and not self.read_requires_key:
                    return None
                raise HTTPException(401, f"this endpoint needs an API key with scope {scope!r} "
                                         "(Authorization: Bearer <key> or X-API-Key)", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            if scope not in key.scopes:
                raise HTTPException(403, f"API key {key.name!r} lacks scope {scope!r}")
            return key

        return dependency
