"""Cold items from text alone: frozen BERT vectors vs fine-tuned ones vs content-kNN, on items nobody rated in training.

  recsys bench coldstart --data-dir ../shared/data/ml-100k --json out/coldstart.json

Each of `--seeds` (three by default) is one full run; the table shows each method's mean and standard deviation over
them, as one split's ~170 test items swing the fine-tuned / frozen ratio by several percent (0.95x and 1.07x on seeds
42 and 7 before the probe-initialised head). A seeded 10% of MovieLens 100k's rated items is the test set and another 10% the validation set; every rating of both
leaves training. Implicit ALS on the remaining (warm) ratings gives user and item factors; a cold item's factors are
predicted from its text vector by ridge regression fitted on the warm items, and each user's held-out ratings of cold
items are ranked among that cold set (nDCG@10, every held-out item relevant). The fine-tune learns from warm items only.
Every choice (fine-tune config, ridge lambda) is made on the validation items; the test items are scored once, with
the chosen settings. Content-kNN scores a cold item by the cosine between its text vector and the mean vector of the
user's training items.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_core.bench.report import write_report
from recsys_core.finetune import FineTuneConfig, FineTunedTextEncoder, collaborative_targets, fine_tune_cached
from recsys_core.finetune.train import CollaborativeVectors
from recsys_core.ingestion import load_movielens
from recsys_core.metrics import ranking_metrics
from recsys_core.schema import ITEM_ID, USER_ID
from recsys_core.text_features import DEFAULT_MODEL, TextEncoder, encode_items, text_features_cache_dir

K = 10
# 30 and 100 were added when the validation items chose 10, then the largest, in 5 of the 6 frozen and fine-tuned runs
# of 2026-12-07 (that run's test numbers had been seen; the choice per run stays on validation).
RIDGE_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 30.0, 100.0)
# Fine-tune settings tried on the validation items (each a change to the `FineTuneConfig` defaults): the former default
# without co-consumed pairs, the older random head, and one trained layer.
GRID: tuple[dict, ...] = (
    {}, {"pair_weight": 0.0}, {"pair_weight": 0.0, "head_init": "random", "head_lr": 1e-3}, {"layers": 1}
)
FROZEN, TUNED = "frozen + ridge", "fine-tuned (chosen on validation) + ridge"
KNN_FROZEN, KNN_TUNED = "content-kNN (frozen)", "content-kNN (fine-tuned, chosen)"
GOAL_RATIO = 1.10
GOAL_FINE_TUNE_SECONDS = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="MovieLens folder (u.data, u.item)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base text encoder")
    parser.add_argument("--seeds", default="42,7,13", help="comma-separated seeds: item split, ALS and fine-tune, one run each")
    parser.add_argument("--cold-share", type=float, default=0.1, help="share of rated items in each of test and validation")
    parser.add_argument("--quick", action="store_true", help="only the default fine-tune config (no search)")
    parser.add_argument("--cache-dir", default="", help="vector and adapter cache; empty: $RECSYS_HOME/cache/text_features")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 beat 2 by 3x on the shared 2-core machine, where spinning threads wait)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (each with --threads)")


def split_items(ratings: pd.DataFrame, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation cold items, test cold items): disjoint seeded draws of `share` of the rated items each."""
    rated = np.unique(ratings[ITEM_ID].to_numpy(np.int64))
    n = int(round(len(rated) * share))
    if n < 1 or 2 * n >= len(rated):
        raise ValueError(f"cold share {share} of {len(rated)} rated items leaves no cold or no warm items")
    drawn = np.random.default_rng(seed).permutation(rated)
    return np.sort(drawn[:n]), np.sort(drawn[n : 2 * n])


def _rows(ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    return np.searchsorted(ids, item_ids)


def ridge_factors(vectors: np.ndarray, warm_rows: np.ndarray, factors: np.ndarray, lam: float) -> np.ndarray:
    """Item factors predicted for every row of `vectors` by ridge regression (with intercept) fitted on the warm rows."""
    design = np.hstack([vectors, np.ones((len(vectors), 1))]).astype(np.float64)
    x = design[warm_rows]
    penalty = lam * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return design @ np.linalg.solve(x.T @ x + penalty, x.T @ factors)


def _ndcg(scores: np.ndarray, users: np.ndarray, cold: np.ndarray, held_out: pd.DataFrame) -> float:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    recs = pd.DataFrame({
        USER_ID: np.repeat(users, order.shape[1]), ITEM_ID: cold[order.ravel()],
        "rank": np.tile(np.arange(1, order.shape[1] + 1), len(users)),
        "score": np.take_along_axis(scores, order, axis=1).ravel(),
    })  # fmt: skip
    return ranking_metrics(recs, held_out, K)[f"ndcg@{K}"]


class ColdProtocol:
    """One cold item set (validation or test): its held-out ratings and the warm users that rated it."""

    def __init__(self, ratings: pd.DataFrame, cold: np.ndarray, cf: CollaborativeVectors) -> None:
        held_out = ratings[ratings[ITEM_ID].isin(cold) & ratings[USER_ID].isin(cf.user_ids)]
        self.cold, self.held_out = cold, held_out
        self.users = np.unique(held_out[USER_ID].to_numpy(np.int64))
        self.user_factors = cf.users[_rows(cf.user_ids, self.users)]

    def ndcg_factors(self, item_ids: np.ndarray, factors: np.ndarray) -> float:
        return _ndcg(self.user_factors @ factors[_rows(item_ids, self.cold)].T, self.users, self.cold, self.held_out)

    def ndcg_knn(self, item_ids: np.ndarray, vectors: np.ndarray, train: pd.DataFrame) -> float:
        history = train[train[USER_ID].isin(self.users)]
        user_rows = _rows(self.users, history[USER_ID].to_numpy(np.int64))
        profiles = np.zeros((len(self.users), vectors.shape[1]))
        np.add.at(profiles, user_rows, vectors[_rows(item_ids, history[ITEM_ID].to_numpy(np.int64))])
        scores = profiles @ vectors[_rows(item_ids, self.cold)].T
        return _ndcg(scores, self.users, self.cold, self.held_out)


def _ridge_rows(name, item_ids, vectors, cf, validation, test) -> tuple[dict, list[dict]]:
    """Chooses lambda on validation; the chosen row carries the test nDCG, the others only their validation nDCG."""
    warm_rows = _rows(item_ids, cf.item_ids)
    tried = []
    for lam in RIDGE_LAMBDAS:
        predicted = ridge_factors(vectors, warm_rows, cf.items, lam)
        ndcg = validation.ndcg_factors(item_ids, predicted)
        tried.append({"method": name, "lambda": lam, "val_ndcg@10": ndcg, "predicted": predicted})
    best = max(tried, key=lambda row: row["val_ndcg@10"])
    best["test_ndcg@10"] = test.ndcg_factors(item_ids, best["predicted"])
    best["chosen"] = True
    return best, [{k: v for k, v in row.items() if k != "predicted"} for row in tried]


def _one_seed(seed: int, args: argparse.Namespace) -> dict:
    """Every method on one seeded split: the fine-tune config and each ridge lambda chosen on its validation items."""
    torch.set_num_threads(max(args.threads, 1))
    ratings, items = load_movielens(Path(args.data_dir))
    cache_dir = _cache_dir(args)
    base = TextEncoder.load(args.model, "cpu", cache_dir=cache_dir)
    val_cold, test_cold = split_items(ratings, args.cold_share, seed)
    train = ratings[~ratings[ITEM_ID].isin(np.concatenate([val_cold, test_cold]))].reset_index(drop=True)
    defaults = FineTuneConfig(seed=seed)
    cf = collaborative_targets(train, defaults.als_dim, seed)
    validation, test = ColdProtocol(ratings, val_cold, cf), ColdProtocol(ratings, test_cold, cf)

    frozen = encode_items(items, base, cache_dir)
    frozen_best, rows = _ridge_rows(FROZEN, frozen.item_ids, frozen.vectors, cf, validation, test)

    tuned: list[tuple[dict, dict, np.ndarray]] = []
    for change in GRID[:1] if args.quick else GRID:
        config = replace(defaults, **change)
        result = fine_tune_cached(items, train, base, config, cache_dir, targets=cf)
        features = encode_items(items, FineTunedTextEncoder.from_base(base, result.adapter_path), cache_dir)
        label = "fine-tuned " + (json.dumps(change, sort_keys=True) if change else "(defaults)")
        best, tried = _ridge_rows(label, features.item_ids, features.vectors, cf, validation, test)
        for row in tried:
            row.update(fine_tune_cpu_s=result.cpu_seconds, from_cache=not result.trained, final_loss=result.losses[-1])
        rows += tried
        tuned.append((best, {**result.to_json(), "config": config.to_dict()}, features.vectors))
        print(f"seed {seed} {label}: val nDCG@10 {best['val_ndcg@10']:.4f} "
              f"({result.cpu_seconds:.1f} CPU s fine-tune)", flush=True)  # fmt: skip
    chosen, chosen_run, chosen_vectors = max(tuned, key=lambda entry: entry[0]["val_ndcg@10"])

    knn = {KNN_FROZEN: frozen.vectors, KNN_TUNED: chosen_vectors}
    for name, vectors in knn.items():
        rows.append({"method": name, "val_ndcg@10": validation.ndcg_knn(frozen.item_ids, vectors, train),
                     "test_ndcg@10": test.ndcg_knn(frozen.item_ids, vectors, train), "chosen": True})  # fmt: skip
    for row in rows:
        row["seed"] = seed
    return {
        "seed": seed,
        "scores": {FROZEN: frozen_best, TUNED: chosen, KNN_FROZEN: rows[-2], KNN_TUNED: rows[-1]},
        "rows": [{k: v for k, v in r.items() if k != "chosen"} for r in rows],
        "chosen_fine_tune": chosen_run,
        "split": {"validation_items": len(val_cold), "test_items": len(test_cold), "validation_users": len(validation.users),
                  "test_users": len(test.users), "train_ratings": len(train)},  # fmt: skip
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cache_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir) if args.cache_dir else text_features_cache_dir()


def run(args: argparse.Namespace) -> int:
    started, load_before = time.perf_counter(), os.getloadavg()
    torch.set_num_threads(max(args.threads, 1))
    seeds = [int(seed) for seed in str(args.seeds).split(",") if seed.strip()]
    _, items = load_movielens(Path(args.data_dir))
    base = TextEncoder.load(args.model, "cpu", cache_dir=_cache_dir(args))
    encode_items(items, base, _cache_dir(args))  # once here, so parallel seeds only read the frozen vectors' cache
    if args.jobs > 1:
        with ProcessPoolExecutor(min(args.jobs, len(seeds)), mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(_one_seed, seeds, [args] * len(seeds)))
    else:
        per_seed = [_one_seed(seed, args) for seed in seeds]

    summary = []
    for method in (FROZEN, TUNED, KNN_FROZEN, KNN_TUNED):
        val_mean, val_std = _mean_std([run["scores"][method]["val_ndcg@10"] for run in per_seed])
        test = [run["scores"][method]["test_ndcg@10"] for run in per_seed]
        test_mean, test_std = _mean_std(test)
        summary.append({"method": method, "val_ndcg@10": round(val_mean, 4), "val_std": round(val_std, 4),
                        "test_ndcg@10": round(test_mean, 4), "test_std": round(test_std, 4),
                        "test_per_seed": " ".join(f"{value:.3f}" for value in test)})  # fmt: skip
    ratio = summary[1]["test_ndcg@10"] / max(summary[0]["test_ndcg@10"], 1e-12)
    per_seed_ratio = [run["scores"][TUNED]["test_ndcg@10"] / max(run["scores"][FROZEN]["test_ndcg@10"], 1e-12)
                      for run in per_seed]  # fmt: skip
    cpu_seconds = max(run["chosen_fine_tune"]["cpu_seconds"] for run in per_seed)  # the slowest seed's chosen fine-tune
    goals = {
        f"fine-tuned >= {GOAL_RATIO} x frozen (mean test nDCG@10 over seeds)": {
            "goal": GOAL_RATIO, "value": round(ratio, 4), "passed": ratio >= GOAL_RATIO},
        f"fine-tune <= {GOAL_FINE_TUNE_SECONDS:.0f} CPU s (slowest seed)": {
            "goal": GOAL_FINE_TUNE_SECONDS, "value": round(cpu_seconds, 1), "passed": cpu_seconds <= GOAL_FINE_TUNE_SECONDS},
    }  # fmt: skip
    write_report(
        "coldstart", summary, args.json, goals=goals, seeds=seeds, ratio_per_seed=[round(r, 4) for r in per_seed_ratio],
        all_rows=[row for run in per_seed for row in run["rows"]],
        chosen_fine_tune={run["seed"]: run["chosen_fine_tune"] for run in per_seed},
        split={run["seed"]: run["split"] for run in per_seed}, text_model=base.model_id, threads=args.threads,
        total_seconds=round(time.perf_counter() - started, 1), jobs=args.jobs,
        load_average_before_after=[list(load_before), list(os.getloadavg())],
    )  # fmt: skip
    print("goals:", json.dumps(goals, indent=1))
    return 0
