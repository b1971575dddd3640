"""Text encoder throughput: naive per-item vs plain batched vs length-sorted torch vs ONNX Runtime (fp32, int8), side by side.

  recsys bench encoder --json bench/encoder.json

Runs on the 1682 MovieLens 100k item texts and on synthetic items (100k by default; the slow reference paths on a
subset, recorded in the JSON), then measures what re-materialising a catalogue with 1% changed items costs relative to a
cold full encode. Every path encodes the same `item_text` strings the `item_text_features` asset encodes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys_core.bench.report import format_table, write_report
from recsys_core.text_features import (
    DEFAULT_MODEL,
    TextEncoder,
    encode_items,
    export_onnx_encoder,
    item_text,
    load_mean_pooled_encoder,
)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"
PATHS = ("naive", "plain_batched", "torch", "onnx", "onnx-int8")


@dataclass
class Dataset:
    name: str
    items: pd.DataFrame
    texts: list[str]
    path_items: int  # how many texts each batched path encodes (all, or a prefix of a large catalogue)
    repeats: int  # timed runs per batched path


def naive_encoder(source: str | Path, max_length: int) -> Callable[[list[str]], np.ndarray]:
    """One text per forward pass, straight from the transformers docs: the baseline the goal is measured against."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    module = load_mean_pooled_encoder(source)

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for text in texts:
                batch = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
                rows.append(module(batch["input_ids"], batch["attention_mask"]).numpy())
        return np.vstack(rows)

    return encode


def plain_batched_encoder(source: str | Path, max_length: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """Fixed-size batches in catalogue order, padded to each batch's longest text: the usual first attempt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    module = load_mean_pooled_encoder(source)

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[start : start + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                )
                rows.append(module(batch["input_ids"], batch["attention_mask"]).numpy())
        return np.vstack(rows)

    return encode


def timed(encode: Callable[[list[str]], np.ndarray], texts: list[str], repeats: int) -> tuple[float, float, np.ndarray]:
    """(wall, process CPU) seconds of the fastest of `repeats` runs after a warm-up, and the vectors.

    The best run is the least disturbed one on a shared machine; CPU seconds (all threads) show the work itself, which
    other people's jobs inflate far less than wall time.
    """
    encode(texts[:8])
    best, cpu, vectors = float("inf"), float("inf"), np.empty(0)
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        vectors = encode(texts)
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, time.process_time() - start_cpu
    return best, cpu, vectors


def neighbour_overlap(vectors: np.ndarray, reference: np.ndarray, k: int = 10, n_queries: int = 1000) -> float:
    """Mean share of each query's top-k cosine neighbours under `reference` that `vectors` also puts in its top-k."""
    queries = np.arange(min(n_queries, len(vectors)))
    k = min(k, len(vectors) - 1)

    def top(matrix: np.ndarray) -> np.ndarray:
        scores = matrix[queries] @ matrix.T
        scores[queries, queries] = -np.inf
        return np.argpartition(-scores, k - 1, axis=1)[:, :k]

    ours, theirs = top(vectors), top(reference)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def bench_paths(dataset: Dataset, args: argparse.Namespace, source: str | Path) -> list[dict[str, Any]]:
    """Every path on the same texts (naive on a prefix when the dataset is large), items/s and fidelity to torch fp32."""
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    naive_rate: float | None = None
    for path in args.paths:
        texts = dataset.texts[: args.naive_items if path == "naive" else dataset.path_items]
        if path == "naive":
            encode = naive_encoder(source, args.max_length)
        elif path == "plain_batched":
            encode = plain_batched_encoder(source, args.max_length, args.batch_size)
        else:
            encoder = TextEncoder.load(args.model, "cpu", backend=path, batch_size=args.batch_size,
                                       max_length=args.max_length, num_threads=args.threads)  # fmt: skip
            encode = encoder.encode
        seconds, cpu_seconds, vectors = timed(encode, texts, 1 if path == "naive" else dataset.repeats)
        rate = len(texts) / seconds
        if path == "naive":
            naive_rate = rate
        if path == "torch":
            reference = vectors
        row: dict[str, Any] = {"dataset": dataset.name, "path": path, "items": len(texts), "seconds": round(seconds, 3),
                               "items_per_s": round(rate, 1),
                               "x_naive": round(rate / naive_rate, 2) if naive_rate else None,
                               "cpu_seconds": round(cpu_seconds, 3),
                               "items_per_cpu_s": round(len(texts) / cpu_seconds, 1)}  # fmt: skip
        if reference is not None and path.startswith("onnx"):
            cosine = (vectors * reference).sum(axis=1)
            row.update(cos_min=round(float(cosine.min()), 4), cos_mean=round(float(cosine.mean()), 4),
                       top10_overlap=round(neighbour_overlap(vectors, reference), 4))  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    return rows


def change_titles(items: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """A copy with `share` of the titles edited, as a catalogue update would."""
    rng = np.random.default_rng(seed)
    changed = items.copy()
    rows = rng.choice(len(items), size=max(1, round(share * len(items))), replace=False)
    changed.loc[changed.index[rows], "title"] = changed["title"].iloc[rows] + " (director's cut)"
    return changed


def bench_incremental(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Cold full encode vs re-encode after 1% of titles changed, both through `encode_items` with the weights loaded."""
    encoder = TextEncoder.load(args.model, "cpu", backend=args.incremental_backend, batch_size=args.batch_size,
                               num_threads=args.threads)  # fmt: skip
    encoder.encode(dataset.texts[:8])
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        full = encode_items(dataset.items, encoder, cache_dir)
        full_seconds = time.perf_counter() - start
        changed = change_titles(dataset.items, args.changed_share, args.seed)
        start = time.perf_counter()
        update = encode_items(changed, encoder, cache_dir)
        update_seconds = time.perf_counter() - start
    row = {"dataset": dataset.name, "backend": args.incremental_backend, "items": len(dataset.items),
           "full_seconds": round(full_seconds, 3), "full_encoded": full.n_encoded,
           "update_seconds": round(update_seconds, 3), "update_encoded": update.n_encoded,
           "update_reused": update.n_reused, "relative_cost": round(update_seconds / full_seconds, 4)}  # fmt: skip
    print(row, flush=True)
    return row


def load_datasets(args: argparse.Namespace) -> list[Dataset]:
    from recsys_core.ingestion import load_movielens
    from recsys_core.synthetic import SyntheticConfig, generate_items

    datasets = []
    if args.data_dir and (Path(args.data_dir) / "u.item").exists():
        _, items = load_movielens(args.data_dir)
        datasets.append(Dataset("movielens-100k", items, item_text(items).tolist(), len(items), args.repeats))
    else:
        print(f"no MovieLens folder at {args.data_dir}: synthetic items only")
    if args.synthetic_items > 0:
        items = generate_items(SyntheticConfig(n_items=args.synthetic_items, seed=args.seed))
        subset = min(args.synthetic_subset or len(items), len(items))
        datasets.append(Dataset(f"synthetic-{args.synthetic_items}", items, item_text(items).tolist(), subset, 1))
    return datasets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="MovieLens 100k folder (u.item)")
    parser.add_argument("--synthetic-items", type=int, default=100_000, help="synthetic catalogue size; 0 skips it")
    parser.add_argument("--synthetic-subset", type=int, default=10_000,
                        help="synthetic items each path encodes (0 = all); the incremental run always uses all")  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--naive-items", type=int, default=500, help="items the naive per-item path encodes (a prefix)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batched path on MovieLens (synthetic: 1)")
    parser.add_argument("--changed-share", type=float, default=0.01)
    parser.add_argument("--incremental-backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads and concurrent ONNX batches (0 = torch's default, ONNX: one per usable core)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)


def run(args: argparse.Namespace) -> int:
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"unknown paths {unknown}; expected some of {PATHS}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    probe = TextEncoder.load(args.model, "cpu")
    export_seconds = {}
    for quantize in (False, True):
        start = time.perf_counter()
        export_onnx_encoder(probe.source, probe.model_id, probe.cache_dir, quantize=quantize)
        export_seconds["int8" if quantize else "fp32"] = round(time.perf_counter() - start, 2)

    load_before = os.getloadavg()
    rows, incremental = [], []
    datasets = load_datasets(args)
    for dataset in datasets:
        rows += bench_paths(dataset, args, probe.source)
        incremental.append(bench_incremental(dataset, args))
    best = {}
    for row in rows:
        if row["path"] != "naive" and row["items_per_s"] > best.get(row["dataset"], {}).get("items_per_s", 0):
            best[row["dataset"]] = row
    print("\n== re-materialising after a catalogue change ==")
    print(format_table(incremental))
    write_report(
        "encoder",
        rows,
        args.json,
        incremental=incremental,
        best_path={name: {"path": row["path"], "items_per_s": row["items_per_s"], "x_naive": row["x_naive"]}
                   for name, row in best.items()},  # fmt: skip
        settings={"model": args.model, "batch_size": args.batch_size, "max_length": args.max_length, "repeats": args.repeats,
                  "naive_items": args.naive_items, "torch_threads": torch.get_num_threads(),
                  "usable_cores": len(os.sched_getaffinity(0)),
                  "texts_per_path": {d.name: d.path_items for d in datasets},
                  "note": "naive encodes the first naive_items texts; other paths the first texts_per_path texts; "
                          "incremental rows use the whole catalogue"},  # fmt: skip
        onnx_export_seconds_zero_when_cached=export_seconds,
        load_average_before_after=[list(load_before), list(os.getloadavg())],
    )
    return 0
