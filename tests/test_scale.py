"""The paths that keep memory bounded at ml-25m scale give what the in-memory ones give on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core import evaluation as ev
from recsys_core.baselines import EASE, ImplicitALS, MostPopular, item_item
from recsys_core.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.training import _PaddedRatings

REPO = Path(__file__).resolve().parents[1]


def test_ml25m_shape_at_25m_ratings_is_ml25m() -> None:
    config = SyntheticConfig.scaled(25_000_095, shape="ml-25m")
    assert (config.n_users, config.n_items) == (162_541, 62_423)
    assert SyntheticConfig.scaled(100_000) == SyntheticConfig()  # the default shape is unchanged
    with pytest.raises(ValueError, match="synthetic shape 'ml-1b'"):
        SyntheticConfig.scaled(1_000, shape="ml-1b")


def test_padded_training_rows_match_the_dense_matrix() -> None:
    rng = np.random.default_rng(0)
    n_users, n = 30, 400
    u, i = rng.integers(0, n_users - 1, n), rng.integers(0, 50, n)  # the last user has no rating
    r, t = rng.integers(1, 6, n).astype(np.float32), rng.integers(0, 10**6, n)
    padded = _PaddedRatings.build(u, i, r, t, n_users)
    order = np.lexsort((i, t, u))
    counts = np.bincount(u, minlength=n_users)
    assert padded.width == counts.max()
    users = torch.tensor([29, 3, 0, 3])
    items, ratings, mask = padded.rows(users)
    for row, user in enumerate(users.tolist()):
        mine = order[u[order] == user]
        assert mask[row].sum() == len(mine) and not mask[row, len(mine) :].any()
        np.testing.assert_array_equal(items[row, : len(mine)], i[mine])
        np.testing.assert_array_equal(ratings[row, : len(mine)], r[mine])


def test_baselines_recommend_the_same_in_small_batches() -> None:
    ratings, items = generate_synthetic(n_users=60, n_items=80, n_ratings=1_500, seed=3)
    users = np.r_[np.unique(ratings["user_id"]), 10_000]  # and one unknown user
    for model in (MostPopular().fit(ratings, items), ImplicitALS(dim=8, iterations=3).fit(ratings, items), EASE().fit(ratings, items)):
        whole = model.recommend(users, k=10)
        pd.testing.assert_frame_equal(model.recommend(users, k=10, batch_size=7), whole)
        seen = ratings.groupby("user_id")["item_id"].apply(set)
        assert not any(item in seen.get(user, set()) for user, item in zip(whole["user_id"], whole["item_id"]))


def test_item_item_baselines_are_skipped_above_the_dense_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    ratings, items = generate_synthetic(n_users=40, n_items=60, n_ratings=800, seed=4)
    assert ev.too_large_baselines(ratings, items) == []
    monkeypatch.setattr(item_item, "MAX_DENSE_ITEMS", 50)
    with pytest.raises(ValueError, match="ease: 60 items need a dense"):
        EASE().fit(ratings, items)
    assert ev.too_large_baselines(ratings, items) == ["ease", "rp3beta"]
    assert {"ease", "rp3beta"}.isdisjoint(ev.fit_baselines(ratings, items))


def test_user_sample_is_seeded_and_the_interval_covers_the_mean() -> None:
    users = np.arange(1, 1_001)
    np.testing.assert_array_equal(ev.sample_users(users[::-1], 0, seed=1), users)
    sample = ev.sample_users(users, 100, seed=1)
    assert len(sample) == 100 and np.all(np.diff(sample) > 0) and set(sample) <= set(users)
    np.testing.assert_array_equal(sample, ev.sample_users(users, 100, seed=1))
    assert not np.array_equal(sample, ev.sample_users(users, 100, seed=2))
    per_user = pd.DataFrame({"ndcg@10": np.random.default_rng(0).random(400)})
    low, high = ev.mean_ci(per_user)["ndcg@10"]
    assert low < per_user["ndcg@10"].mean() < high and high - low == pytest.approx(2 * 1.96 * per_user["ndcg@10"].std() / 20)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole graph: 4 min at load average 3-5 on 2 cores, over 15 at load 15
def test_bench_pipeline_runs_the_whole_graph(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "recsys_dagster.cli", "bench", "pipeline", "--ratings", "2000", "--shape", "ml-100k",
               "--json", str(out), "--work-dir", str(tmp_path / "work")]  # fmt: skip
    subprocess.run(command, env=env, check=True, cwd=tmp_path, timeout=900)
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["status"] == "SUCCESS" and run["graph_peak_gb"] > 0.1
    steps = {row["step"]: row for row in report["rows"]}
    assert {"raw_ratings", "validate_rating_log", "rating_splits", "trained_model", "onnx_model", "offline_metrics"} <= set(steps)
    assert all(row["status"] == "success" and row["wall_s"] > 0 and row["peak_rss_gb"] > 0.05 for row in steps.values())
    assert 1_000 < steps["raw_ratings"]["rows_out"] == steps["rating_splits"]["rows_in"]  # the tiny source caps per-user counts
    assert steps["trained_model"]["epochs_run"] >= 1 and steps["trained_model"]["examples_per_s"] > 0
    assert set(report["goals"]) and (tmp_path / "pipeline.png").stat().st_size > 10_000
