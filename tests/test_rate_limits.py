"""Per-key and per-address rate limits over real HTTP (uvicorn in a thread on 127.0.0.1, so the test owns the clock):
a bucket empties into 429s with Retry-After, refills with time (never beyond its burst), and each 429 is counted."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from recsys_core.events.redis_process import free_port
from recsys_core.serving.app import create_app
from recsys_core.serving.auth import ApiKeys, hash_key
from recsys_core.serving.reload import DirectorySource, ModelHolder, load_validated
from test_serving import export_model

APP_KEY, OTHER_KEY = "app-key-for-tests", "other-key-for-tests"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> ModelHolder:
    model = export_model(tmp_path_factory.mktemp("ratelimit"), 1)
    return ModelHolder(load_validated(DirectorySource(model), "t", "cpu"))


def keys_file(path: Path, **config: object) -> Path:
    path.write_text(json.dumps({"keys": [
        {"name": "app", "sha256": hash_key(APP_KEY), "scopes": ["read"], "limit": {"rate": 2, "burst": 3}},
        {"name": "other", "sha256": hash_key(OTHER_KEY), "scopes": ["read"]}], **config}))  # fmt: skip
    return path


@contextmanager
def serving(app) -> Iterator[str]:  # noqa: ANN001
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def statuses(client: httpx.Client, n: int, key: str | None = None) -> list[int]:
    headers = {"X-API-Key": key} if key else {}
    return [client.get("/recommendations/1", headers=headers).status_code for _ in range(n)]


def test_a_key_bucket_empties_into_429_and_refills_with_time(holder: ModelHolder, tmp_path: Path) -> None:
    clock = Clock()
    keys = ApiKeys.from_file(keys_file(tmp_path / "keys.json", default_limit={"rate": 100, "burst": 100}), clock=clock)
    with serving(create_app(holder, keys=keys)) as url, httpx.Client(base_url=url) as client:
        assert statuses(client, 3, APP_KEY) == [200, 200, 200]
        refused = client.get("/recommendations/1", headers={"X-API-Key": APP_KEY})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json() == {"detail": "rate limit of 'app' (2/s, burst 3) reached; retry after 1 s", "errors": []}
        assert statuses(client, 5, OTHER_KEY) == [200] * 5  # another key's bucket (the file's default limit)
        clock.now += 0.5  # one token back
        assert statuses(client, 2, APP_KEY) == [200, 429]
        clock.now += 60  # full again, but never beyond the burst
        assert statuses(client, 4, APP_KEY) == [200, 200, 200, 429]
        metrics = client.get("/metrics").text
        assert 'recsys_rate_limited_total{key="app"} 3.0' in metrics and 'key="other"' not in metrics


def test_anonymous_reads_are_limited_per_client_address(holder: ModelHolder, tmp_path: Path) -> None:
    clock = Clock()
    keys = ApiKeys.from_file(keys_file(tmp_path / "keys.json", anonymous_limit={"rate": 0.1, "burst": 2}), clock=clock)
    with serving(create_app(holder, keys=keys)) as url:
        with httpx.Client(base_url=url) as first, httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as second:  # fmt: skip
            assert statuses(first, 3) == [200, 200, 429]
            assert first.get("/recommendations/1").headers["retry-after"] == "10"  # 1 token at 0.1/s
            assert statuses(second, 3) == [200, 200, 429]  # its own bucket
            assert statuses(first, 2, OTHER_KEY) == [200, 200]  # a key has its own (here unlimited) bucket
            assert 'recsys_rate_limited_total{key="anonymous"} 3.0' in first.get("/metrics").text


def test_429_is_documented_and_bad_limits_are_named(holder: ModelHolder, tmp_path: Path) -> None:
    schema = create_app(holder).openapi()
    for path, method in (("/recommendations/{user_id}", "get"), ("/admin/users/{user_id}", "delete")):
        documented = schema["paths"][path][method]["responses"]["429"]
        assert documented["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert "Retry-After" in documented["headers"]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "a", "sha256": hash_key("a"), "scopes": ["read"], "limit": {"rate": 0}}]}))
    with pytest.raises(ValueError, match=r"keys\.json: keys\[0\]\.limit: a rate limit is"):
        ApiKeys.from_file(path)
