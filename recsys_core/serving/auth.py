"""API keys with scopes (`read`, `write`, `admin`), as a small FastAPI dependency other routes (and rate limits) reuse.

Keys are configured as SHA-256 hashes only, in a JSON file named by `$RECSYS_API_KEYS_FILE` (or `recsys serve
--api-keys`): `{"read_requires_key": false, "keys": [{"name": "ingest", "sha256": "<hex>", "scopes": ["write"]}]}`.
Make a hash with `printf %s "$KEY" | sha256sum`. A key is presented as `Authorization: Bearer <key>` or `X-API-Key`;
the clear key is hashed on arrival and never stored or logged (logs name the key's `name`). Write and admin routes
always need a key; read routes only when `read_requires_key`. Missing or unknown key: 401; known key, wrong scope: 403.

Rate limits (`recsys_core.serving.ratelimit`): a key's own `"limit": {"rate": R, "burst": B}`, else the file's
`default_limit`; anonymous reads (allowed when `read_requires_key` is false) share one bucket per client address with
`anonymous_limit`. No limit configured: unlimited. Over the limit: 429 with `Retry-After`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request

from recsys_core.serving.ratelimit import RateLimit, TokenBuckets, retry_after

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
    limit: RateLimit | None = None  # None: the file's default_limit


@dataclass(frozen=True)
class ApiKeys:
    """Key hashes -> (name, scopes). No keys configured: every write is refused (401), reads stay open."""

    by_hash: dict[str, ApiKey] = field(default_factory=dict)
    read_requires_key: bool = False
    default_limit: RateLimit | None = None
    anonymous_limit: RateLimit | None = None
    buckets: TokenBuckets = field(default_factory=TokenBuckets, compare=False)

    @classmethod
    def from_file(cls, path: str | Path, clock: Callable[[], float] = time.monotonic) -> ApiKeys:
        """Reads and checks the keys file; a malformed entry is a ValueError naming the file and the entry."""
        config = json.loads(Path(path).read_text())
        by_hash = {}
        for i, entry in enumerate(config.get("keys", [])):
            digest, scopes = str(entry.get("sha256", "")).lower(), frozenset(entry.get("scopes", []))
            if not _HEX64.match(digest) or not scopes or not scopes <= set(SCOPES) or not entry.get("name"):
                raise ValueError(f"{path}: keys[{i}] needs a name, a 64-hex-digit sha256 and scopes from {list(SCOPES)}")
            by_hash[digest] = ApiKey(str(entry["name"]), scopes, RateLimit.parse(entry.get("limit"), f"{path}: keys[{i}].limit"))
        return cls(
            by_hash, bool(config.get("read_requires_key", False)),
            RateLimit.parse(config.get("default_limit"), f"{path}: default_limit"),
            RateLimit.parse(config.get("anonymous_limit"), f"{path}: anonymous_limit"), TokenBuckets(clock),
        )  # fmt: skip

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
                    self.throttle(request, None)
                    return None
                raise HTTPException(401, f"this endpoint needs an API key with scope {scope!r} "
                                         "(Authorization: Bearer <key> or X-API-Key)", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            if scope not in key.scopes:
                raise HTTPException(403, f"API key {key.name!r} lacks scope {scope!r}")
            self.throttle(request, key)
            return key

        return dependency

    def throttle(self, request: Request, key: ApiKey | None) -> None:
        """Takes a token from the key's bucket (or the client address's, unkeyed); 429 with Retry-After when empty."""
        limit = (key.limit or self.default_limit) if key is not None else self.anonymous_limit
        if limit is None:
            return
        if key is not None:
            bucket, label = f"key:{key.name}", key.name
        else:
            bucket, label = f"addr:{request.client.host if request.client else '-'}", "anonymous"
        wait = self.buckets.take(bucket, limit, label)
        if wait:
            seconds = retry_after(wait)
            raise HTTPException(429, f"rate limit of {label!r} ({limit.rate:g}/s, burst {limit.burst:g}) reached; "
                                     f"retry after {seconds} s", headers={"Retry-After": seconds})  # fmt: skip
