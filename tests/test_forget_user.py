"""Forgetting a user, end to end: events, source ratings, a landed file (one of its rows quarantined) and a trained,
exported model; forget through the keyed admin endpoint; the service answers the user as a stranger at once (and
after a hot reload to the old bundle); the retrain holds nothing of theirs, and the asset check says so."""

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetSelection,
    DagsterInstance,
    SkipReason,
    asset,
    build_sensor_context,
    load_assets_from_modules,
    materialize,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient

from recsys_core.events import Event, open_store
from recsys_core.bench.serving import random_ratings
from recsys_core.events.feedback import window_key
from recsys_core.paths import recsys_home
from recsys_core.privacy import Tombstones, forget_user
from recsys_core.serving.app import create_app
from recsys_core.serving.auth import ApiKeys, hash_key
from recsys_core.serving.events_api import LiveEvents
from recsys_core.serving.privacy_api import ForgottenUsers, poll_tombstones
from recsys_core.serving.reload import DirectorySource, ModelHolder, Reloader, ServedModel, load_validated
from recsys_core.synthetic import generate_synthetic
from recsys_dagster.assets import export, ingestion, split, training, validation
from recsys_dagster.checks import no_forgotten_users
from recsys_dagster.cli import main
from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.resources.tracking import MlflowResource
from recsys_dagster.sensors import retrain_on_forget
from test_serving import N_ITEMS, N_USERS, export_model
from test_training import text_for

ADMIN, READ = "admin-key-for-tests", "read-key-for-tests"
USER, OTHER = 6, 19  # both have 48 ratings in the source
PIPELINE = AssetSelection.all() - AssetSelection.assets("landed_ratings", "landed_events")
HEADER = "user_id,item_id,rating,timestamp\n"


@asset
def item_text_features(validated_items: pd.DataFrame) -> dict:
    """Stands in for the BERT features (random unit vectors): this test is about data, not text."""
    features = text_for(validated_items)
    return {"path": str(features.save(recsys_home() / "features.npz")), "fingerprint": features.fingerprint}


PIPELINE_CONFIG = {
    "validate_item_catalogue": {"config": {"data_docs": False}},
    "validate_rating_log": {"config": {"data_docs": False}},
    "rating_splits": {"config": {"strategy": "random"}},
    "trained_model": {"config": {"epochs": 2, "dim": 8, "history_len": 8, "batch_size": 16}},
    "onnx_model": {"config": {"parity_users": 10, "int8_users": 20}},
}


def run_pipeline(root: Path, instance: DagsterInstance, selection: AssetSelection = PIPELINE, partition: str | None = None,
                 ops: dict | None = None):  # fmt: skip
    return materialize(
        [*load_assets_from_modules([ingestion, validation, split, training, export]), item_text_features, no_forgotten_users],
        selection=selection,
        partition_key=partition,
        resources={
            "io_manager": RecsysIOManager(base_dir=str(root / "assets")),
            "data_source": DataSourceResource(kind="files", ratings_path=str(root / "ratings.csv"),
                                              items_path=str(root / "items.csv"), landing_dir=str(root / "landing")),
            "mlflow": MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment_name="forget"),
            "compute": ComputeResource(device="cpu"),
        },  # fmt: skip
        run_config={"ops": PIPELINE_CONFIG if ops is None else ops},
        instance=instance,
        raise_on_error=False,
    )


def check_found(result) -> dict:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_forgotten_users"]
    return {"passed": evaluation.passed, **evaluation.metadata["found"].value}


def users_in(result, asset: str, output: str | None = None) -> set[int]:
    node = {"validated_ratings": "validate_rating_log", "rejected_ratings": "validate_rating_log"}.get(asset, "rating_splits")
    return set(result.output_for_node(node, output or asset)["user_id"].dropna().astype(int))


def test_forget_user_end_to_end(tmp_path: Path) -> None:
    ratings, items = generate_synthetic(n_users=60, n_items=80, n_ratings=1500, seed=1)
    ratings.to_csv(tmp_path / "ratings.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "drop.csv").write_text(HEADER + f"{USER},3,4,1700000000\n{USER},4,9,1700000001\n{OTHER},5,4,1700000002\n")
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store = open_store(url)
    now = time.time()
    store.append([Event("u-1", USER, 7, "rating", now, 5.0), Event("u-2", USER, 8, "click", now),
                  Event("o-1", OTHER, 7, "rating", now, 4.0)])  # fmt: skip
    window = window_key(store.read()[0].received_at)
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [
        {"name": "ops", "sha256": hash_key(ADMIN), "scopes": ["admin"]},
        {"name": "app", "sha256": hash_key(READ), "scopes": ["read"]}]}))  # fmt: skip

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("rating_drops", ["drop.csv"])
        instance.add_dynamic_partitions("event_windows", [window])
        assert run_pipeline(tmp_path, instance, AssetSelection.assets("landed_ratings"), "drop.csv", {}).success
        assert run_pipeline(tmp_path, instance, AssetSelection.assets("landed_events"), window,
                            {"landed_events": {"config": {"url": url}}}).success
        before = run_pipeline(tmp_path, instance)
        assert before.success and check_found(before) == {"passed": True}
        assert USER in users_in(before, "validated_ratings") and USER in users_in(before, "rejected_ratings")  # rating 9
        old_bundle = Path(before.output_for_node("onnx_model")["onnx_dir"])

        # The service on the trained bundle, with the live store: the user is known and personalised.
        holder = ModelHolder(load_validated(DirectorySource(old_bundle), "old", "cpu"))
        live = LiveEvents(open_store(url))
        client = TestClient(create_app(holder, live=live, keys=ApiKeys.from_file(tmp_path / "keys.json")))
        assert client.get(f"/recommendations/{USER}").json()["source"] == "model"
        assert client.delete(f"/admin/users/{USER}", headers={"X-API-Key": READ}).status_code == 403
        assert client.delete("/admin/users/-1", headers={"X-API-Key": ADMIN}).status_code == 422
        forgot = client.delete(f"/admin/users/{USER}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert forgot.status_code == 200 and forgot.json()["removed"] == {"event_store_events": 2, "served_model_masked": 1}
        stranger = client.get(f"/recommendations/{USER}").json()
        assert stranger["source"] == "popularity"
        posted = client.post("/recommendations", json={"user_id": USER, "history": [{"item_id": 3}]}).json()
        assert posted["source"] == "history" and posted["user_id"] is None  # the ad-hoc history only, not the stored one
        holder.swap(ServedModel(holder.current.scorer, "reloaded", "reloaded", "dir:old"))  # hot reload: same old bundle
        assert client.get(f"/recommendations/{USER}").json()["source"] == "popularity"
        assert client.get(f"/recommendations/{OTHER}").json()["source"] == "model"
        assert live.store.history(USER) == [] and {e.user_id for e in live.store.read()} == {OTHER}

        stale = run_pipeline(tmp_path, instance, AssetSelection.checks(no_forgotten_users), ops={})
        found = check_found(stale)  # nothing retrained yet: the check names every place the user still is
        assert not found.pop("passed") and all(ids == [USER] for ids in found.values())
        assert set(found) == {"validated_ratings", "train_ratings", "validation_ratings", "test_ratings", "model_dir",
                              "onnx_dir", "quantized_dir"}  # fmt: skip

        after = run_pipeline(tmp_path, instance)  # the retrain: every source read again, the tombstone applied
        assert after.success and check_found(after) == {"passed": True}
        for asset_name in ("validated_ratings", "rejected_ratings", "train_ratings", "validation_ratings", "test_ratings"):
            users = users_in(after, asset_name)
            assert USER not in users and (OTHER in users or asset_name == "rejected_ratings"), asset_name
        event = instance.get_latest_materialization_event(validation.validate_rating_log.keys_by_output_name["validated_ratings"])
        assert event.asset_materialization.metadata["forgotten_rows"].value == 48 + 2 + 2  # source, landed file, a rating and a click
        new_bundle = Path(after.output_for_node("onnx_model")["onnx_dir"])
        assert USER not in np.load(new_bundle / "user_ids.npy") and OTHER in np.load(new_bundle / "user_ids.npy")
        holder.swap(load_validated(DirectorySource(new_bundle), "new", "cpu"))
        assert client.get(f"/recommendations/{USER}").json()["source"] == "popularity"

    (record,) = Tombstones().audit(USER)
    assert record.actor == "key:ops" and record.removed == {"event_store_events": 2, "served_model_masked": 1} and record.at <= time.time()
    live.store.close()


@pytest.fixture
def tombstone_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of every read of the tombstone file."""
    reads: list[str] = []
    users = Tombstones.users

    def counted(self: Tombstones) -> frozenset[int]:
        reads.append(threading.current_thread().name)
        return users(self)

    monkeypatch.setattr(Tombstones, "users", counted)
    return reads


def keyed_service(tmp_path: Path, interval_s: float) -> tuple[FastAPI, Reloader, list[int]]:
    """A service on a fresh bundle, polling it every `interval_s`; two of the bundle's users."""
    model = export_model(tmp_path, 1)
    source = DirectorySource(model)
    holder = ModelHolder(load_validated(source, source.current_token(), "cpu"))
    reloader = Reloader(holder, source, interval_s, "cpu")
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{"name": "ops", "sha256": hash_key(ADMIN), "scopes": ["admin"]}]}))
    users = sorted({int(u) for u in random_ratings(N_USERS, N_ITEMS, per_user=10, seed=1)["user_id"]})
    return create_app(holder, reloader, keys=ApiKeys.from_file(tmp_path / "keys.json")), reloader, users[:3]


def source_of(client: TestClient, user: int) -> str:
    return client.get(f"/recommendations/{user}").json()["source"]


def test_requests_never_read_tombstones_a_cli_forget_applies_at_the_next_poll_and_the_endpoint_at_once(
    tmp_path: Path, tombstone_reads: list[str]
) -> None:
    app, reloader, (by_cli, by_endpoint, kept) = keyed_service(tmp_path, interval_s=3600.0)  # polled by hand: `tick`
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store = open_store(url)
    store.append([Event("k-1", by_cli, 1, "click", 1e9), Event("k-2", kept, 1, "click", 1e9)])
    with TestClient(app) as client:
        assert tombstone_reads == ["MainThread"]  # once, at start
        assert main(["forget-user", str(by_cli), "--event-store", url]) == 0
        assert main(["forget-user", "--", "-1"]) == 2
        assert [e.user_id for e in store.read()] == [kept]
        assert [source_of(client, by_cli) for _ in range(5)] == ["model"] * 5  # no request re-reads the file
        assert tombstone_reads == ["MainThread"]
        reloader.poller.tick()  # one poll: the model source checked (unchanged), then the tombstones read
        assert tombstone_reads == ["MainThread", "MainThread"] and source_of(client, by_cli) == "popularity"

        assert client.delete(f"/admin/users/{by_endpoint}", headers={"X-API-Key": ADMIN}).status_code == 200
        assert source_of(client, by_endpoint) == "popularity" and source_of(client, kept) == "model"  # at once, no poll
        assert len(tombstone_reads) == 2
    (record, _) = Tombstones().audit()
    assert record.actor.startswith("cli:") and record.user_id == by_cli and record.removed == {"event_store_events": 1}
    with sqlite3.connect(Tombstones().path) as connection, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("DELETE FROM audit")
    store.close()


def test_the_reloader_thread_reads_the_tombstones_so_a_cli_forget_reaches_a_running_service(
    tmp_path: Path, tombstone_reads: list[str]
) -> None:
    app, _, (user, _, kept) = keyed_service(tmp_path, interval_s=0.05)
    with TestClient(app) as client:
        assert source_of(client, user) == "model"
        forget_user(user, "cli:test", Tombstones())  # what `recsys forget-user` does beside the service
        deadline = time.monotonic() + 60.0  # generous: the machine may be loaded; one poll is 0.05 s
        while source_of(client, user) != "popularity":
            assert time.monotonic() < deadline, "the forget never reached the service"
            time.sleep(0.05)
        assert source_of(client, kept) == "model"
    assert tombstone_reads[0] == "MainThread" and set(tombstone_reads[1:]) == {"recsys-model-reloader"}


def test_without_a_polling_reloader_the_tombstones_get_a_poller_of_their_own(tmp_path: Path) -> None:
    model = export_model(tmp_path, 1)
    holder = ModelHolder(load_validated(DirectorySource(model), "first", "cpu"))
    forgotten = ForgottenUsers(Tombstones(), holder, refresh_s=7.0)
    for reloader in (None, Reloader(holder, DirectorySource(model), 0.0, "cpu")):  # none, or reload off
        own = poll_tombstones(forgotten, reloader)
        assert own is not None and own.works == (forgotten.refresh,) and own.interval_s == 7.0
    polling = Reloader(holder, DirectorySource(model), 5.0, "cpu")
    assert poll_tombstones(forgotten, polling) is None and polling.poller.works == (polling.check_once, forgotten.refresh)


def test_a_forget_requests_one_retrain_per_batch_of_forgets() -> None:
    with DagsterInstance.ephemeral() as instance:
        assert isinstance(retrain_on_forget(build_sensor_context(instance=instance)), SkipReason)
        for user in (4, 5):
            forget_user(user, "cli:test", Tombstones())
        first = retrain_on_forget(build_sensor_context(instance=instance))
        assert [r.tags["recsys/trigger"] for r in first.run_requests] == ["forget-user:2 user(s)"] and first.cursor == "2"
        assert isinstance(retrain_on_forget(build_sensor_context(instance=instance, cursor=first.cursor)), SkipReason)
        assert retrain_on_forget.job_name == "full_pipeline"
