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
from recsys_core.baselines import EASE, BiasedMF, ImplicitALS, MostPopular, classic, item_item
from recsys_core.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.split import stratified_random_split
from recsys_core.training import HybridTrainer, TrainConfig, _PaddedRatings, sample_validation, train_hybrid

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


def test_top_k_is_the_head_of_the_stable_descending_sort() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n_items = int(rng.integers(1, 30))
        scores = rng.integers(0, 4, (int(rng.integers(1, 6)), n_items)).astype(np.float64)  # many ties
        scores[rng.random(scores.shape) < 0.3] = -np.inf
        k = int(rng.integers(0, n_items + 1))
        np.testing.assert_array_equal(classic.top_k_stable(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])


def test_baselines_fit_on_the_evaluated_users_plus_a_seeded_sample_within_the_cap() -> None:
    ratings, _ = generate_synthetic(n_users=200, n_items=80, n_ratings=4_000, seed=5)
    evaluated = np.array([1, 2, 3])
    assert ev.baseline_fit_sample(ratings, evaluated, max_ratings=0) is ratings
    assert ev.baseline_fit_sample(ratings, evaluated, max_ratings=len(ratings)) is ratings
    sample = ev.baseline_fit_sample(ratings, evaluated, max_ratings=1_000, seed=1)
    assert len(sample) <= 1_000 and set(evaluated) <= set(sample["user_id"])
    whole_users = ratings[ratings["user_id"].isin(sample["user_id"].unique())]
    pd.testing.assert_frame_equal(sample, whole_users)  # users are kept with all their ratings
    pd.testing.assert_frame_equal(sample, ev.baseline_fit_sample(ratings, evaluated, max_ratings=1_000, seed=1))
    assert set(sample["user_id"]) != set(ev.baseline_fit_sample(ratings, evaluated, max_ratings=1_000, seed=2)["user_id"])
    # the evaluated users are kept even when their own ratings exceed the cap
    heavy = ratings["user_id"].value_counts().index[:5].to_numpy()
    assert set(ev.baseline_fit_sample(ratings, heavy, max_ratings=10, seed=1)["user_id"]) == set(heavy)


def test_pipeline_bench_rows_carry_the_evaluation_samples() -> None:
    from recsys_core.bench.pipeline import step_rows

    log = {"parents": {"offline_metrics": ["train_ratings"], "train_ratings": []},
           "steps": {"rating_splits": {"pid": 1, "start": 0.0, "end": 2.0, "status": "success",
                                       "assets": {"train_ratings": {"dagster/row_count": 800}}},
                     "offline_metrics": {"pid": 2, "start": 2.0, "end": 6.0, "status": "success",
                                         "assets": {"offline_metrics": {"test_users": 20, "test_users_total": 90,
                                                                        "baselines_fit_ratings": 500, "seconds": 4.0}}}}}  # fmt: skip
    rows = {row["step"]: row for row in step_rows(1_000, log, {1: 2**20, 2: 2**21})}
    evaluation = rows["offline_metrics"]
    assert (evaluation["test_users"], evaluation["test_users_total"], evaluation["baselines_fit_ratings"]) == (20, 90, 500)
    assert evaluation["rows_in"] == 800 and evaluation["peak_rss_gb"] == 2.0
    assert "baselines_fit_ratings" not in rows["rating_splits"] and "seconds" not in evaluation


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


TINY = dict(dim=8, n_heads=2, history_len=16, batch_size=16, prior_dim=4, rating_prior_dim=4, show_progress=False, device="cpu")


def test_epoch_user_cap_is_a_no_op_below_it_and_a_seeded_sample_above() -> None:
    ratings, items = generate_synthetic(n_users=60, n_items=80, n_ratings=1_500, seed=5)
    n_users = ratings["user_id"].nunique()
    below = HybridTrainer(ratings, items, None, TrainConfig(epoch_users=n_users, **TINY))
    expected = torch.randperm(n_users, generator=torch.Generator().manual_seed(42))
    torch.testing.assert_close(below.epoch_order(), expected)  # the same draw as without a cap
    assert below.steps_per_epoch == -(-n_users // 16)
    capped = [HybridTrainer(ratings, items, None, TrainConfig(epoch_users=20, **TINY)) for _ in range(2)]
    first, again = capped[0].epoch_order(), capped[1].epoch_order()
    torch.testing.assert_close(first, again)
    assert len(first) == 20 and len(set(first.tolist())) == 20 and capped[0].steps_per_epoch == 2
    assert not torch.equal(first, capped[0].epoch_order())  # a new sample every epoch
    split = stratified_random_split(ratings, 0.15, 0.15, seed=0)
    result = train_hybrid(split.train, split.validation, items, None, TrainConfig(epochs=2, patience=9, epoch_users=20, **TINY))
    assert result.cost["epoch_cap_bit"] and result.cost["epoch_users"] == 20 and result.cost["epochs_run"] == 2
    whole = train_hybrid(split.train, split.validation, items, None, TrainConfig(epochs=2, patience=9, **TINY))
    assert not whole.cost["epoch_cap_bit"] and whole.cost["epoch_users"] == split.train["user_id"].nunique()


def test_time_budget_stops_training_and_resizes_the_schedule() -> None:
    ratings, items = generate_synthetic(n_users=60, n_items=80, n_ratings=1_500, seed=5)
    split = stratified_random_split(ratings, 0.15, 0.15, seed=0)
    spent = train_hybrid(split.train, split.validation, items, None,
                         TrainConfig(epochs=5, patience=9, time_budget_minutes=1e-6, **TINY))  # fmt: skip
    assert spent.cost["budget_bit"] and spent.cost["epochs_run"] == 1 and spent.cost["planned_epochs"] == 1
    ample = train_hybrid(split.train, split.validation, items, None, TrainConfig(epochs=3, patience=9, **TINY))
    assert not ample.cost["budget_bit"] and ample.cost["epochs_run"] == 3 and ample.cost["planned_epochs"] == 3
    assert ample.cost["examples_per_s"] > 0


def test_validation_sample_is_seeded_and_whole_below_the_cap() -> None:
    ratings, _ = generate_synthetic(n_users=60, n_items=80, n_ratings=1_500, seed=5)
    assert sample_validation(ratings, 1_000, seed=1) is ratings
    sample = sample_validation(ratings, 10, seed=1)
    assert sample["user_id"].nunique() == 10
    pd.testing.assert_frame_equal(sample, sample_validation(ratings, 10, seed=1))
    for user, group in sample.groupby("user_id"):
        assert len(group) == (ratings["user_id"] == user).sum()  # every rating of a sampled user


def test_bench_pipeline_merges_earlier_sizes_and_prefers_fresh_runs(tmp_path: Path) -> None:
    from recsys_core.bench.pipeline import merge

    def run(n: int, minutes: float) -> dict:
        return {"ratings": n, "wall_min": minutes}

    earlier = tmp_path / "small.json"
    earlier.write_text(json.dumps({"runs": [run(5, 2.0), run(1, 1.0)],
                                   "rows": [{"ratings": 5, "step": "a"}, {"ratings": 1, "step": "a"}]}))  # fmt: skip
    steps, runs = merge([earlier], [{"ratings": 25, "step": "a"}, {"ratings": 5, "step": "b"}], [run(25, 9.0), run(5, 3.0)])
    assert [r["ratings"] for r in runs] == [1, 5, 25] and runs[1]["wall_min"] == 3.0
    assert [(s["ratings"], s["step"]) for s in steps] == [(1, "a"), (5, "b"), (25, "a")]


def test_baseline_fit_caps_bite_only_on_large_data(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_core.baselines import LibBPR, classic
    from recsys_core.baselines.classic import capped_iterations

    assert capped_iterations(15, 1_000_000, 15e6, 3) == 15 and capped_iterations(15, 5_000_000, 15e6, 3) == 3
    assert capped_iterations(100, 20_000_000, 1e8, 3) == 5
    ratings, items = generate_synthetic(n_users=60, n_items=80, n_ratings=1_500, seed=3)
    small = ImplicitALS(dim=8, iterations=4).fit(ratings, items), BiasedMF(dim=8, epochs=2, batch_size=256).fit(ratings, items)
    assert small[0].iterations_run == 4 and small[1].steps_per_epoch == -(-len(ratings) // 256) > 1
    assert LibBPR(dim=8, iterations=7).fit(ratings, items).iterations_run == 7
    monkeypatch.setattr(classic, "MAX_ALS_RATING_ITERATIONS", 2 * len(ratings))
    monkeypatch.setattr(classic, "MAX_PARAMETER_STEPS", 2 * (60 + 80) * 9)  # 2 epochs x 1 step x the parameters
    monkeypatch.setattr(classic, "MIN_STEPS_PER_EPOCH", 1)
    monkeypatch.setattr(classic, "MAX_MF_RATING_EPOCHS", 3 * len(ratings))
    assert BiasedMF(dim=8, epochs=5, batch_size=256).fit(ratings, items).epochs_run == 3
    capped = ImplicitALS(dim=8, iterations=4).fit(ratings, items), BiasedMF(dim=8, epochs=2, batch_size=256).fit(ratings, items)
    assert capped[0].iterations_run == classic.MIN_ALS_ITERATIONS and capped[1].steps_per_epoch == 1
    assert ev.baseline_fit_costs({"implicit_als": capped[0], "biased_mf": capped[1], "most_popular": MostPopular()}) == {
        "implicit_als": "3 of 4 iterations", "biased_mf": "2 of 2 epochs x 1 steps"}


def test_budget_resizes_the_cosine_to_the_epochs_that_fit() -> None:
    from recsys_core.training import TrainCost, _over_budget

    ratings, items = generate_synthetic(n_users=60, n_items=80, n_ratings=1_500, seed=5)
    trainer = HybridTrainer(ratings, items, None, TrainConfig(epochs=10, **TINY))
    cost = TrainCost(users=60, epoch_users=60, validation_users=0, validation_users_total=0, budget_seconds=60.0,
                     epochs_run=1, epoch_seconds=[20.0], planned_epochs=10)  # fmt: skip
    assert not _over_budget(trainer, cost, remaining=35.0)  # one epoch done, room for one more at 20 s
    assert cost.planned_epochs == 2 and trainer.scheduler.T_max == 2 * trainer.steps_per_epoch
    cost.epochs_run, cost.epoch_seconds = 2, [20.0, 10.0]
    assert not _over_budget(trainer, cost, remaining=25.0) and cost.planned_epochs == 4  # faster epochs: two more
    cost.epochs_run, cost.epoch_seconds = 4, [20.0, 10.0, 10.0, 10.0]
    assert _over_budget(trainer, cost, remaining=5.0) and cost.budget_bit and cost.planned_epochs == 4
    cost = TrainCost(users=60, epoch_users=60, validation_users=0, validation_users_total=0, budget_seconds=60.0,
                     epochs_run=1, epoch_seconds=[0.1], planned_epochs=10)  # fmt: skip
    assert not _over_budget(trainer, cost, remaining=50.0) and cost.planned_epochs == 10  # ample: never past config.epochs


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="needs Linux's scheduler autogroups")
def test_the_graph_session_keeps_the_benchmarks_autogroup_priority() -> None:
    """A child session at autogroup nice 5 (lowering is allowed to anyone) starts a grandchild in its own session,
    as the bench starts the graph; the grandchild's group gets 5 too, where a new session would start at 0."""
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from recsys_core.bench.pipeline import inherit_autogroup\n"
        "Path('/proc/self/autogroup').write_text('5')\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True)\n"
        "inherit_autogroup(child.pid)\n"
        "print(Path(f'/proc/{child.pid}/autogroup').read_text().split('nice')[1].strip())\n"
        "child.kill()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO,
                         start_new_session=True)  # fmt: skip
    assert out.stdout.strip() == "5"
