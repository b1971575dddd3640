"""Model quality on MovieLens 100k: the hybrid beside most-popular, biased MF and implicit ALS, in one run.

- ranking: Microsoft Recommenders' protocol: per-user stratified random 75/25 split (seed 42), top-10 per test
  user with training items removed, every test item relevant; MAP, nDCG@10, Precision@10, Recall@10.
- rating: RMSE and MAE on the canonical u1..u5 base/test folds, averaged.
- cold-start items: a seeded 10% of items lose all their ratings from training; each user's held-out ratings of
  those items are ranked among the cold items only, so the hybrid works from text alone.
The hybrid runs with the `TrainConfig` defaults for every task (one model, no per-task tuning); those defaults were
chosen on a different random split (seed 7), so the test ratings here never picked them. No early stopping: the
training split is used whole, for the default number of epochs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
import torch

from recsys_core.baselines import BiasedMF, ImplicitALS, MostPopular
from recsys_core.bench.report import write_report
from recsys_core.ingestion import canonical_ratings, load_movielens, read_ratings_file
from recsys_core.metrics import mae, ranking_metrics, rmse
from recsys_core.paths import default_cache_dir
from recsys_core.schema import ITEM_ID, RATING, USER_ID
from recsys_core.split import stratified_random_split
from recsys_core.text_features import ItemTextFeatures, TextEncoder, encode_items
from recsys_core.training import TrainConfig, train_hybrid

K = 10
SPLIT_SEED = 42
COLD_ITEM_SHARE = 0.1
GOALS = {"ndcg@10": 0.45, "rmse": 0.90, "total_seconds": 600.0, "hybrid_train_seconds": 60.0}


class Ranker(Protocol):
    def recommend(
        self, user_ids: np.ndarray, k: int = 10, exclude_seen: bool = True, candidates: np.ndarray | None = None
    ) -> pd.DataFrame: ...

    def predict_ratings(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="the MovieLens 100k folder (u.data, u.item, u1.base ...)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--recs-out", help="write the hybrid's top-10 per test user (user_id, item_id, rank, score)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:0")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--folds", default="1,2,3,4,5", help="which u<n>.base/test folds to average ('' to skip)")


def _hybrid_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(device=args.device, seed=SPLIT_SEED, show_progress=False)


def _fit_hybrid(train: pd.DataFrame, items: pd.DataFrame, text: ItemTextFeatures, config: TrainConfig) -> tuple[Ranker, float]:
    result = train_hybrid(train, None, items, text, config)
    return result.bundle, result.train_seconds


def _fit_baseline(factory: Callable[[], Any], train: pd.DataFrame, items: pd.DataFrame) -> tuple[Ranker, float]:
    started = time.perf_counter()
    model = factory().fit(train, items)
    return model, time.perf_counter() - started


def _models(args: argparse.Namespace, text: ItemTextFeatures) -> dict[str, Callable]:
    """name -> fit(train, items) for every compared model."""
    return {
        "hybrid": lambda train, items: _fit_hybrid(train, items, text, _hybrid_config(args)),
        "most_popular": lambda train, items: _fit_baseline(MostPopular, train, items),
        "biased_mf": lambda train, items: _fit_baseline(BiasedMF, train, items),
        "implicit_als": lambda train, items: _fit_baseline(ImplicitALS, train, items),
    }


def _ranking(args, ratings, items, text) -> tuple[list[dict], pd.DataFrame]:
    split = stratified_random_split(ratings, 0.0, 0.25, seed=SPLIT_SEED)
    users = np.unique(split.test[USER_ID].to_numpy())
    rows, hybrid_recs = [], pd.DataFrame()
    for name, fit in _models(args, text).items():
        model, fit_seconds = fit(split.train, items)
        started = time.perf_counter()
        recs = model.recommend(users, k=K, exclude_seen=True)
        metrics = ranking_metrics(recs, split.test, K)
        rows.append({"task": "ranking 75/25", "model": name, **{m: metrics[m] for m in
                     (f"map@{K}", f"ndcg@{K}", f"precision@{K}", f"recall@{K}")},
                     "fit_s": round(fit_seconds, 1), "predict_s": round(time.perf_counter() - started, 2)})  # fmt: skip
        print(rows[-1], flush=True)
        if name == "hybrid":
            hybrid_recs = recs
    return rows, hybrid_recs


def _read_fold(data_dir: Path, name: str) -> pd.DataFrame:
    return canonical_ratings(read_ratings_file(data_dir / name, "ml-100k"))


def _rating(args, data_dir, items, text) -> list[dict]:
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    per_model: dict[str, list[tuple[float, float, float]]] = {}
    for fold in folds:
        train, test = _read_fold(data_dir, f"u{fold}.base"), _read_fold(data_dir, f"u{fold}.test")
        for name, fit in _models(args, text).items():
            model, fit_seconds = fit(train, items)
            if not getattr(model, "predicts_ratings", True):
                continue
            predicted = model.predict_ratings(test[USER_ID].to_numpy(), test[ITEM_ID].to_numpy())
            truth = test[RATING].to_numpy()
            per_model.setdefault(name, []).append((rmse(truth, predicted), mae(truth, predicted), fit_seconds))
            print(f"fold u{fold} {name}: rmse {per_model[name][-1][0]:.4f}", flush=True)
    return [
        {"task": f"rating u{folds[0]}..u{folds[-1]}", "model": name, "rmse": float(np.mean([v[0] for v in values])),
         "mae": float(np.mean([v[1] for v in values])), "fit_s": round(float(np.mean([v[2] for v in values])), 1)}
        for name, values in per_model.items()
    ]  # fmt: skip


def _cold_start(args, ratings, items, text) -> list[dict]:
    """Hold out every rating of a seeded 10% of rated items; rank each user's held-out cold items among them."""
    rng = np.random.default_rng(SPLIT_SEED)
    rated = np.unique(ratings[ITEM_ID].to_numpy())
    cold = np.sort(rng.choice(rated, int(round(len(rated) * COLD_ITEM_SHARE)), replace=False))
    is_cold = ratings[ITEM_ID].isin(cold)
    train, test = ratings[~is_cold].reset_index(drop=True), ratings[is_cold].reset_index(drop=True)
    test = test[test[USER_ID].isin(train[USER_ID])]
    users = np.unique(test[USER_ID].to_numpy())
    rows = []
    for name, fit in _models(args, text).items():
        if name not in ("hybrid", "most_popular"):
            continue
        model, fit_seconds = fit(train, items)
        recs = model.recommend(users, k=K, exclude_seen=True, candidates=cold)
        metrics = ranking_metrics(recs, test, K)
        rows.append({"task": f"cold items ({len(cold)})", "model": name, f"ndcg@{K}": metrics[f"ndcg@{K}"],
                     f"precision@{K}": metrics[f"precision@{K}"], f"recall@{K}": metrics[f"recall@{K}"],
                     f"map@{K}": metrics[f"map@{K}"], "fit_s": round(fit_seconds, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    torch.set_num_threads(max(args.threads, 1))
    data_dir = Path(args.data_dir)
    ratings, items = load_movielens(data_dir)
    encoder = TextEncoder.load("default", device=args.device)
    text = encode_items(items, encoder, default_cache_dir())
    timings = {"text_features_s": round(time.perf_counter() - started, 1)}

    phase = time.perf_counter()
    ranking_rows, recs = _ranking(args, ratings, items, text)
    timings["ranking_s"] = round(time.perf_counter() - phase, 1)
    if args.recs_out:
        Path(args.recs_out).parent.mkdir(parents=True, exist_ok=True)
        recs[[USER_ID, ITEM_ID, "rank", "score"]].to_parquet(args.recs_out, index=False)
        print(f"wrote {len(recs)} recommendations to {args.recs_out}")
    phase = time.perf_counter()
    rating_rows = _rating(args, data_dir, items, text)
    timings["rating_s"] = round(time.perf_counter() - phase, 1)
    phase = time.perf_counter()
    cold_rows = _cold_start(args, ratings, items, text)
    timings["cold_start_s"] = round(time.perf_counter() - phase, 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)

    rows = ranking_rows + rating_rows + cold_rows
    hybrid = {row["task"]: row for row in rows if row["model"] == "hybrid"}
    ranking_hybrid = hybrid.get("ranking 75/25", {})
    rating_hybrid = next((row for task, row in hybrid.items() if task.startswith("rating")), {})
    beats = all(ranking_hybrid.get(f"ndcg@{K}", 0) > row[f"ndcg@{K}"] for row in ranking_rows if row["model"] != "hybrid")
    goals = {
        "ndcg@10 >= 0.45": ranking_hybrid.get(f"ndcg@{K}", 0.0) >= GOALS["ndcg@10"],
        "beats every baseline on ndcg@10": beats,
        "rmse <= 0.90": bool(rating_hybrid) and rating_hybrid["rmse"] <= GOALS["rmse"],
        "hybrid ranking training <= 60 s": ranking_hybrid.get("fit_s", 1e9) <= GOALS["hybrid_train_seconds"],
        "whole bench <= 600 s": timings["total_s"] <= GOALS["total_seconds"],
    }
    write_report(
        "quality", rows, args.json, timings=timings, goals=goals, threads=args.threads,
        device=str(args.device), text_model=text.model_id, recs_out=args.recs_out or "",
    )  # fmt: skip
    print("timings:", timings)
    print("goals:", goals)
    return 0
