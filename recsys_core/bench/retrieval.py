"""Top-k retrieval at catalogue scale: exact ORT scan, numpy/BLAS matvec + argpartition, FAISS flat, serving index.

The catalogue is synthetic and built in place (one float32 [n_items, dim] array, filled chunk by chunk): items are
clustered low-rank vectors (2000 clusters in a rank-24 space) plus isotropic noise, with log-normal norms like
popularity; a user's taste is one cluster's centre plus latent noise. Trained embeddings have such structure;
i.i.d. Gaussian vectors have no neighbourhoods for any approximate index to find. Every engine reads the same matrix
without copying it: the ORT graph takes it as an input, FAISS flat is `faiss.knn` (the brute-force kernel of
IndexFlatIP, without the index's own copy), and the serving index holds only codes and ids beside it. The index is
tuned (nprobe) on half of the users and its recall is reported on the other half (exact engines: on the users their
timed calls reached).
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import faiss
import numpy as np
import onnxruntime as ort
import psutil

from recsys_core.retrieval import IndexConfig, ItemIndex, exact_top_k, recall_at_k
from recsys_core.serving.graphs import build_topk_graph
from recsys_core.serving.providers import physical_cores, session_options

CHUNK = 1 << 18


def synthetic_catalogue(
    n_items: int, dim: int, n_users: int, seed: int = 42, rank: int = 24, clusters: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """(items [n_items, dim], users [n_users, dim]) float32, the item matrix written in place chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, rank)).astype(np.float32)
    basis = (rng.standard_normal((rank, dim)) / np.sqrt(rank)).astype(np.float32)
    items = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, CHUNK):
        rows = items[start : start + CHUNK]
        latent = centres[rng.integers(0, clusters, len(rows))] + 0.35 * rng.standard_normal((len(rows), rank), dtype=np.float32)
        np.matmul(latent, basis, out=rows)
        rows += 0.1 * rng.standard_normal(rows.shape, dtype=np.float32)
        rows *= rng.lognormal(0.0, 0.4, (len(rows), 1)).astype(np.float32)
    tastes = centres[rng.integers(0, clusters, n_users)] + 0.5 * rng.standard_normal((n_users, rank)).astype(np.float32)
    users = tastes @ basis
    return items, users.astype(np.float32)


def _timed_searches(
    search: Callable[[np.ndarray], np.ndarray], users: np.ndarray, n: int, budget_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wall ms per single-user call, CPU ms per call (all threads of the process), top-10 of each user reached): up
    to `n` calls cycling through `users`, stopping once `budget_s` is spent (after at least 10 calls). CPU time is
    what a call costs whatever else the machine runs; wall time is what a user waits on this machine now."""
    search(users[:1])  # warm-up
    timings, cpu, found, deadline = [], [], [], time.perf_counter() + budget_s
    for i in range(n):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = search(users[i % len(users)][None])
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        if i < len(users):
            found.append(result[0])
        if i >= 10 and started > deadline:
            break
    return np.array(timings), np.array(cpu), np.stack(found)


def _rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def catalogue_rows(
    n_items: int, dim: int, n_users: int, calls: int, budget_s: float, config: IndexConfig
) -> list[dict[str, Any]]:
    """One catalogue size: the four engines on the same matrix and users."""
    rss_start = _rss_gb()
    started = time.perf_counter()
    items, users = synthetic_catalogue(n_items, dim, n_users)
    generate_s = time.perf_counter() - started
    half = n_users // 2
    tune_users, test_users = users[:half], users[half:]
    _, truth = exact_top_k(items, test_users, 10)
    common = {"n_items": n_items, "dim": dim, "matrix_gb": round(items.nbytes / 1e9, 3)}
    print(f"  {n_items:>10,} items: matrix {items.nbytes / 1e9:.2f} GB built in place in {generate_s:.1f} s", flush=True)

    threads = physical_cores()
    session = ort.InferenceSession(
        build_topk_graph().SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    no_exclusions, k = np.zeros((1, n_items), dtype=bool), np.array([10], dtype=np.int64)

    def ort_scan(q: np.ndarray) -> np.ndarray:
        return session.run(None, {"user_vec": q, "exclude_mask": no_exclusions, "k": k, "item_matrix": items})[1]

    def faiss_flat(q: np.ndarray) -> np.ndarray:
        return faiss.knn(q, items, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]

    build_started, rss_before_build = time.perf_counter(), _rss_gb()
    index = ItemIndex.build(items, config)
    build_s, build_rss_growth = time.perf_counter() - build_started, _rss_gb() - rss_before_build
    index.tune(tune_users, None)
    print(f"    index built in {build_s:.1f} s (RSS +{build_rss_growth:.2f} GB), nprobe per norm tier tuned to "
          f"{index.params['nprobes']} (tiers of {index.params['tier_items']} items)", flush=True)
    nprobes = "/".join(map(str, index.params["nprobes"]))
    engines: list[tuple[str, Callable[[np.ndarray], np.ndarray], float, int]] = [
        ("onnxruntime exact scan", ort_scan, 0.0, 0),
        ("numpy matvec + argpartition", lambda q: exact_top_k(items, q, 10)[1], 0.0, 0),
        ("faiss flat (knn)", faiss_flat, 0.0, 0),
        (f"serving index ({index.params['kind']}, nprobes {nprobes})", lambda q: index.search(q, 10)[1], build_s, index.nbytes),
    ]  # fmt: skip
    rows = []
    for name, search, build_seconds, extra_bytes in engines:
        faiss.cvar.indexIVF_stats.reset()
        index.tiers_searched = 0
        latency, cpu, found = _timed_searches(search, test_users, calls, budget_s)
        scanned = faiss.cvar.indexIVF_stats.ndis / (len(latency) + 1)  # + the warm-up call
        tiers = index.tiers_searched / (len(latency) + 1) if extra_bytes else None
        rows.append({
            **common, "engine": name, "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99)),
            "calls": len(latency), "recall_at_10": recall_at_k(found, truth[: len(found)]), "recall_users": len(found),
            "codes_scanned_per_call": round(scanned), "tiers_searched_per_call": tiers,
            "build_s": round(build_seconds, 2),
            "extra_memory_gb": round(extra_bytes / 1e9, 3), "rss_gb": round(_rss_gb(), 2),
        })  # fmt: skip
        row = rows[-1]
        print(f"    {name:<40} p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  (CPU p50 {row['cpu_p50_ms']:.3f}"
              f" p99 {row['cpu_p99_ms']:.3f} ms)  recall@10 {row['recall_at_10']:.3f}", flush=True)
    for row in rows:
        row["rss_growth_over_matrix"] = round((row["rss_gb"] - rss_start) / (items.nbytes / 1e9), 3)
    del session, index, items
    gc.collect()
    return rows


def retrieval_rows(
    sizes: list[int], dim: int, calls: int, budget_s: float, config: IndexConfig = IndexConfig(target_recall=0.96)
) -> list[dict[str, Any]]:
    """The engines at each catalogue size. The index is tuned to recall@10 0.96 on 100 users so that the other 100,
    on which the 0.95 goal is judged, clear it: nprobe now moves in 25% steps, and a tuning that stops just above
    0.95 lands on either side of it on other users."""
    rows = []
    for n_items in sizes:
        needed_gb = n_items * dim * 4 / 1e9 * 1.4 + 1.0
        available_gb = psutil.virtual_memory().available / 1e9
        if available_gb < needed_gb:
            print(f"  {n_items:,} items skipped: {available_gb:.1f} GB available, about {needed_gb:.1f} GB needed", flush=True)
            rows.append({"n_items": n_items, "dim": dim, "engine": "skipped", "note": f"{available_gb:.1f} GB available"})
            continue
        rows += catalogue_rows(n_items, dim, 200, calls, budget_s, config)
    return rows


def retrieval_goals(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The goals of issue 14: 10M items p99 <= 5 ms at recall@10 >= 0.95; >= 10x FAISS flat at 1M; one matrix."""
    def pick(n_items: int, prefix: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["n_items"] == n_items and r["engine"].startswith(prefix)), None)

    goals: dict[str, dict[str, Any]] = {}
    large = pick(10_000_000, "serving index")
    goals["10M items: serving index p99 <= 5 ms single-user at recall@10 >= 0.95"] = (
        {"goal": "p99 <= 5 ms, recall >= 0.95", "value": f"p99 {large['p99_ms']:.2f} ms (CPU p99 {large['cpu_p99_ms']:.2f} ms), "
                  f"recall {large['recall_at_10']:.3f}",
         "passed": bool(large["p99_ms"] <= 5.0 and large["recall_at_10"] >= 0.95)}
        if large else {"goal": "p99 <= 5 ms, recall >= 0.95", "value": "not run", "passed": False}
    )  # fmt: skip
    index, flat = pick(1_000_000, "serving index"), pick(1_000_000, "faiss flat")
    speedup = flat["p50_ms"] / index["p50_ms"] if index and flat else 0.0
    goals["1M items: serving index >= 10x faster than FAISS flat (p50) at recall@10 >= 0.95"] = {
        "goal": ">= 10x", "value": f"{speedup:.1f}x at recall {index['recall_at_10']:.3f}" if index else "not run",
        "passed": bool(index and speedup >= 10 and index["recall_at_10"] >= 0.95),
    }
    # Judged at the largest catalogue measured: at small sizes fixed costs (runtimes, arenas) dominate the ratio.
    measured = [r for r in rows if r["engine"].startswith("serving index")]
    largest = max(measured, key=lambda r: r["n_items"], default=None)
    growth = largest["rss_growth_over_matrix"] if largest else float("inf")
    goals["the process holds the item matrix once (RSS growth <= 1.5x the matrix, largest catalogue)"] = {
        "goal": "<= 1.5", "value": f"{growth} at {largest['n_items']:,} items" if largest else "not run", "passed": bool(growth <= 1.5),
    }
    return goals
