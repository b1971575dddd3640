"""Shared test set-up: offline model loading, and a private $RECSYS_HOME per test so nothing leaks into the repo."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MOVIELENS_100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


@pytest.fixture(autouse=True)
def recsys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "recsys_home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    return home


@pytest.fixture
def movielens_100k() -> Path:
    if not (MOVIELENS_100K / "u.data").exists():
        pytest.skip(f"real MovieLens 100k not found at {MOVIELENS_100K}")
    return MOVIELENS_100K


@pytest.fixture
def redis_server(tmp_path: Path):
    """A real redis-server on a free 127.0.0.1 port (AOF, fsync always), stopped after the test."""
    from recsys_core.events.redis_process import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
