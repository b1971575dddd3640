"""Live events for real: the service (uvicorn subprocess on 127.0.0.1) on each store backend, events posted over HTTP,
recommendations that change without retraining, bad input refused, and the landed events validated."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from fastapi.testclient import TestClient

from recsys_core.bench.events import Service
from recsys_core.bench.serving import build_random_bundle, random_ratings
from recsys_core.export import export_onnx
from recsys_core.events import open_store
from recsys_core.events.feedback import events_to_ratings, window_key
from recsys_core.events.redis_process import RedisServer
from recsys_core.serving.app import create_app
from recsys_core.serving.auth import ApiKeys, hash_key
from recsys_core.serving.reload import DirectorySource, ModelHolder, load_validated
from recsys_core.validation import RatingRules, combine_rating_sources, validate_ratings
from recsys_dagster.assets.ingestion import landed_events
from recsys_dagster.resources.io_manager import RecsysIOManager
from test_serving import ITEMS, N_ITEMS, N_USERS

pytestmark = pytest.mark.slow  # real redis-server / uvicorn processes
WRITE, READ = "write-key-for-tests", "read-key-for-tests"
WRITER = {"Authorization": f"Bearer {WRITE}"}
TRAINED_UNTIL = 900_000_000  # random_ratings draws timestamps below this
KNOWN_USER, NEW_USER = int(random_ratings(N_USERS, N_ITEMS, per_user=10, seed=1)["user_id"].iloc[0]), 900_001


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving test's model, exported with the training cut-off the trained_model asset records."""
    root = tmp_path_factory.mktemp("events-model")
    ratings = random_ratings(N_USERS, N_ITEMS, per_user=10, seed=1)
    model_dir = build_random_bundle(root / "model", ratings, np.arange(1, N_ITEMS + 1), dim=16, history_len=8, seed=1)
    (model_dir / "training.json").write_text(json.dumps({"trained_until": TRAINED_UNTIL}))
    assert export_onnx(model_dir, root / "onnx", ITEMS)["trained_until"] == TRAINED_UNTIL
    return root / "onnx"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model: Path) -> Iterator[dict]:
    root = tmp_path_factory.mktemp(f"events-{request.param}")
    redis = RedisServer(root / "redis").start() if request.param == "redis" else None
    url = redis.url if redis else f"sqlite:///{root / 'events.sqlite'}"
    service = Service(model, url, root, {WRITE: ["write"], READ: ["read"]}, "--max-batch", "50").start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{service.port}", timeout=10)
    try:
        yield {"client": client, "url": url, "root": root, "items": np.arange(1, N_ITEMS + 1)}
    finally:
        client.close()
        service.stop()
        if redis:
            redis.stop()


def recommended(client: httpx.Client, user: int) -> dict:
    response = client.get(f"/recommendations/{user}", params={"k": 10})
    assert response.status_code == 200, response.text
    return response.json()


def ids(body: dict) -> list[int]:
    return [item["item_id"] for item in body["items"]]


def test_events_change_the_next_recommendations_and_land_validated(service: dict, tmp_path: Path) -> None:
    client, started = service["client"], time.time()
    known_before, new_before = recommended(client, KNOWN_USER), recommended(client, NEW_USER)
    assert known_before["source"] == "model" and new_before["source"] == "popularity"
    clicked = ids(known_before)[0]  # the known user's top item: once clicked it must leave the list
    rated = ids(new_before)[:2]
    batch = [
        {"event_id": "k1", "user_id": KNOWN_USER, "item_id": clicked, "type": "click", "request_id": "req-1"},
        {"event_id": "k2", "user_id": KNOWN_USER, "item_id": ids(known_before)[1], "type": "impression", "request_id": "req-1",
         "payload": {"slot": "home", "position": 2, "tags": ["a", "é"]}},
        {"event_id": "k3", "user_id": KNOWN_USER, "item_id": ids(known_before)[2], "type": "click", "timestamp": TRAINED_UNTIL - 10},
        {"event_id": "n1", "user_id": NEW_USER, "item_id": rated[0], "type": "rating", "value": 5, "timestamp": started - 5},
        {"event_id": "n2", "user_id": NEW_USER, "item_id": rated[1], "type": "purchase"},
    ]
    response = client.post("/events", json={"events": batch}, headers=WRITER)
    assert response.status_code == 200 and response.json() == {"received": 5, "stored": 5, "duplicates": 0}, response.text
    retry = client.post("/events", json={"events": batch}, headers={"X-API-Key": WRITE})
    assert retry.json() == {"received": 5, "stored": 0, "duplicates": 5}

    known_after, new_after = recommended(client, KNOWN_USER), recommended(client, NEW_USER)  # read-your-writes
    assert known_after["source"] == "model" and ids(known_after) != ids(known_before) and clicked not in ids(known_after)
    # Only the click counts (as rating 4): impressions are no history, k3 is older than the training cut-off.
    same = client.post("/recommendations", json={"user_id": KNOWN_USER, "history": [{"item_id": clicked, "rating": 4.0}], "k": 10})
    assert ids(same.json()) == ids(known_after)
    assert new_after["source"] == "history" and ids(new_after) != ids(new_before) and not set(rated) & set(ids(new_after))
    assert {item["reason"]["item_id"] for item in new_after["items"]} <= set(rated)

    resources = {"io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets"))}
    run_config = {"ops": {"landed_events": {"config": {"url": service["url"]}}}}
    windows = sorted({window_key(started), window_key(time.time())})
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("event_windows", windows)
        frames = [materialize([landed_events], partition_key=w, resources=resources, instance=instance, run_config=run_config)
                  .output_for_node("landed_events") for w in windows]  # fmt: skip
    landed = pd.concat(frames, ignore_index=True)
    assert sorted(landed["event_id"]) == ["k1", "k2", "k3", "n1", "n2"]
    assert landed.set_index("event_id")["rating"].to_dict() == pytest.approx(
        {"k1": 4.0, "k2": np.nan, "k3": 4.0, "n1": 5.0, "n2": 5.0}, nan_ok=True)
    assert landed.set_index("event_id").loc["k2", "request_id"] == "req-1"
    assert json.loads(landed.set_index("event_id").loc["k2", "payload"]) == {"slot": "home", "position": 2, "tags": ["a", "é"]}
    assert landed.set_index("event_id")["payload"].isna().sum() == 4
    outcome = validate_ratings(combine_rating_sources({"events": events_to_ratings(landed)}), service["items"], RatingRules())
    assert len(outcome.rejected) == 0 and len(outcome.valid) == 4 and outcome.report.schema_ok


def good(**changes) -> dict:
    return {"event_id": "bad-1", "user_id": 5, "item_id": 3, "type": "click", **changes}


@pytest.mark.parametrize(
    ("body", "headers", "status", "names"),
    [
        ({"events": [good(), good(event_id="bad-2", item_id=999_999)]}, WRITER, 422, "events[1].item_id"),
        ({"events": [good(user_id=-1)]}, WRITER, 422, "events[0].user_id"),
        ({"events": [good(item_id=1.5)]}, WRITER, 422, "events[0].item_id"),
        ({"events": [good(user_id="7")]}, WRITER, 422, "events[0].user_id"),
        ('{"events": [{"event_id": "bad-1", "user_id": 5, "item_id": 3, "type": "rating", "value": NaN}]}', WRITER, 422, "events[0].value"),
        ('{"events": [{"event_id": "bad-1", "user_id": 5, "item_id": 3, "type": "rating", "value": Infinity}]}', WRITER, 422, "events[0].value"),
        ({"events": [good(type="rating", value=9)]}, WRITER, 422, "events[0].value"),
        ({"events": [good(timestamp=time.time() + 3600)]}, WRITER, 422, "events[0].timestamp"),
        ({"events": [good(type="like")]}, WRITER, 422, "events[0].type"),
        ({"events": [good(colour="red")]}, WRITER, 422, "events[0].colour"),
        ({"events": [good(), good(event_id="bad-2", payload=[1, 2])]}, WRITER, 422, "events[1].payload: Input should be an object"),
        ({"events": [good(payload={"note": "x" * 5000})]}, WRITER, 422, "events[0].payload: 5011 bytes as compact JSON; the limit is 4096"),
        ('{"events": [{"event_id": "bad-1", "user_id": 5, "item_id": 3, "type": "click", "payload": {"x": NaN}}]}', WRITER, 422,
         "events[0].payload: numbers must be finite"),
        ({"events": [good(event_id=f"bad-{i}") for i in range(51)]}, WRITER, 413, "limit is 50"),
        ({"events": [good(request_id="x" * 2_000_000)]}, WRITER, 413, "larger than 1048576 bytes"),
        ("not json", WRITER, 422, "Invalid JSON"),
        ({"events": [good()]}, {}, 401, "needs an API key"),
        ({"events": [good()]}, {"Authorization": "Bearer wrong"}, 401, "invalid API key"),
        ({"events": [good()]}, {"X-API-Key": READ}, 403, "lacks scope 'write'"),
    ],
)
def test_bad_batches_get_a_4xx_naming_the_problem_and_store_nothing(service: dict, body, headers, status, names) -> None:
    store = open_store(service["url"])
    before = store.count()
    if isinstance(body, str):
        response = service["client"].post("/events", content=body, headers={**headers, "content-type": "application/json"})
    else:
        response = service["client"].post("/events", json=body, headers=headers)
    assert response.status_code == status, response.text
    assert names in response.json()["detail"]
    assert store.count() == before
    store.close()


def test_event_metrics(service: dict) -> None:
    client = service["client"]
    client.post("/events", json={"events": [good(event_id="metric-1")]}, headers=WRITER)
    client.post("/events", json={"events": [good(type="like")]}, headers=WRITER)
    client.get("/recommendations/5")
    text = client.get("/metrics").text
    assert 'recsys_events_accepted_total{type="click"}' in text
    assert 'recsys_event_batches_rejected_total{reason="unknown_type"}' in text
    assert "recsys_event_store_write_seconds_count" in text and "recsys_live_history_length_bucket" in text


def test_keys_file_is_checked_and_reads_can_require_a_key(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text(json.dumps({"keys": [{"name": "x", "sha256": "not-a-hash", "scopes": ["write"]}]}))
    with pytest.raises(ValueError, match=r"keys.json: keys\[0\]"):
        ApiKeys.from_file(bad)
    keys_file = tmp_path / "keys-ok.json"
    keys_file.write_text(json.dumps({"read_requires_key": True, "keys": [{"name": "r", "sha256": hash_key(READ), "scopes": ["read"]},
                                                                         {"name": "w", "sha256": hash_key(WRITE), "scopes": ["write"]}]}))  # fmt: skip
    source = DirectorySource(model)
    app = create_app(ModelHolder(load_validated(source, source.current_token(), "cpu", 1)), keys=ApiKeys.from_file(keys_file))
    with TestClient(app) as client:  # in-process ASGI: the same app uvicorn serves
        assert client.get("/recommendations/1").status_code == 401
        assert client.get("/recommendations/1", headers={"X-API-Key": READ}).status_code == 200
        assert client.get("/recommendations/1", headers={"X-API-Key": WRITE}).status_code == 403
        assert client.get("/health").status_code == 200  # health stays open for probes
        assert client.post("/events", json={"events": []}, headers={"X-API-Key": WRITE}).status_code == 404  # no store: no route
