"""`recsys simulate` against the real service (uvicorn in a subprocess on 127.0.0.1): requests at a rate, clicks by
the personas' known preferences, exposure and click records that the online report can read."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import pytest

from recsys_core.bench.serving import build_random_bundle, random_ratings
from recsys_core.experiments import attribution, simulate_command
from recsys_core.experiments.simulation import SimulatedUsers
from recsys_core.export import export_onnx
from recsys_core.synthetic import SyntheticConfig
from servers import recsys_service

N_USERS, N_ITEMS = 30, 50


@pytest.mark.slow
def test_simulate_over_http_writes_exposures_and_preference_driven_clicks(tmp_path):
    ratings = random_ratings(N_USERS, N_ITEMS, per_user=10, seed=1)
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": [f"Movie {i}" for i in range(1, N_ITEMS + 1)]})
    model_dir = build_random_bundle(tmp_path / "model", ratings, items["item_id"].to_numpy(), dim=16, history_len=8, seed=1)
    export_onnx(model_dir, tmp_path / "onnx", items)
    with recsys_service(tmp_path / "onnx", tmp_path / "server.log") as client:
        parser = argparse.ArgumentParser()
        simulate_command.add_arguments(parser)
        args = parser.parse_args(["--url", str(client.base_url).rstrip("/"), "--rate", "40", "--duration", "3", "--out",
                                  str(tmp_path / "sim"), "--n-users", str(N_USERS), "--n-items", str(N_ITEMS),
                                  "--n-ratings", "300", "--seed", "7"])  # fmt: skip
        started = time.monotonic()
        assert simulate_command.run(args) == 0
        assert time.monotonic() - started < 30
    exposures = pd.read_parquet(tmp_path / "sim" / "exposures.parquet")
    clicks = pd.read_parquet(tmp_path / "sim" / "clicks.parquet")
    requests = exposures.drop_duplicates("request_id")
    assert 90 <= len(requests) <= 121  # 40/s for 3 s, open loop
    assert (exposures.groupby("request_id").size() == 10).all() and not requests["fallback"].any()
    assert requests["arm"].nunique() == 1 and (requests["latency_ms"] > 0).all()
    assert attribution.status_counts(attribution.attribute_clicks(exposures, clicks))["attributed"] == len(clicks)
    # Clicks follow the personas' known preferences: the click count matches the click model's expectation.
    simulated = SimulatedUsers(SyntheticConfig(n_users=N_USERS, n_items=N_ITEMS, n_ratings=300, seed=42))
    lists = np.stack(exposures.sort_values(["request_id", "rank"]).groupby("request_id")["item_id"].apply(np.array))
    personas = exposures.sort_values("request_id").drop_duplicates("request_id")["user_id"].to_numpy()
    p = simulated.click_probability(personas, lists)
    assert abs(len(clicks) - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum()) + 1
