"""Downloading MovieLens releases from GroupLens into a local cache, verified before use.

Each archive is checked against a pinned SHA-256 when one is configured, else against the `.md5` file
GroupLens publishes beside it. Archives are downloaded to a temporary name and renamed only once
verified, so an interrupted or corrupt download never poisons the cache. Network errors are retried with
exponential backoff.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recsys_core.paths import default_cache_dir

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
# Release name -> folder inside its zip.
RELEASES: dict[str, str] = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-10m": "ml-10M100K",
    "ml-latest-small": "ml-latest-small",
    "ml-latest": "ml-latest",
    "ml-25m": "ml-25m",
    "ml-32m": "ml-32m",
}
_COMPLETE = ".complete"


class ChecksumError(RuntimeError):
    pass


def _get(url: str, destination: Path | None, attempts: int, backoff_seconds: float, timeout: float) -> bytes | None:
    """GET with retries; streams to `destination` when given, else returns the body."""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if destination is None:
                    return response.read()
                with destination.open("wb") as out:
                    shutil.copyfileobj(response, out, length=1 << 20)
                return None
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == attempts:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts:
                raise
        time.sleep(backoff_seconds * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def fetch_movielens(
    release: str = "ml-100k",
    cache_dir: str | Path | None = None,
    base_url: str = GROUPLENS_URL,
    sha256: str | None = None,
    attempts: int = 4,
    backoff_seconds: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Returns the extracted release folder, downloading and verifying it only when not cached yet."""
    if release not in RELEASES:
        raise ValueError(f"unknown MovieLens release {release!r}; expected one of {sorted(RELEASES)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "datasets"
    target = cache / release
    if (target / _COMPLETE).exists():
        return target / RELEASES[release]
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{base_url}/{release}.zip"
    partial = cache / f"{release}.zip.part"
    _get(url, partial, attempts, backoff_seconds, timeout)
    if sha256:
        expected, actual, kind = sha256.lower(), _digest(partial, "sha256"), "SHA-256"
    else:
        body = _get(url + ".md5", None, attempts, backoff_seconds, timeout) or b""
        expected, actual, kind = body.decode("ascii", "replace").split()[0].lower(), _digest(partial, "md5"), "MD5"
    if actual != expected:
        partial.unlink()
        raise ChecksumError(f"{url}: {kind} {actual} does not match the published {expected}; download discarded")
    archive = cache / f"{release}.zip"
    partial.replace(archive)
    shutil.rmtree(target, ignore_errors=True)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    if not (target / RELEASES[release]).is_dir():
        raise ChecksumError(f"{archive}: expected a folder {RELEASES[release]!r} inside the archive")
    (target / _COMPLETE).write_text(actual)
    return target / RELEASES[release]
