"""Ingest + validate throughput and peak memory: real MovieLens and the synthetic source at scale."""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from recsys_core.bench.report import write_report
from recsys_core.ingestion import LAYOUTS, read_movielens, read_ratings_file, read_items_file
from recsys_core.synthetic import SyntheticConfig, write_synthetic
from recsys_core.validation import validate_items, validate_ratings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="a MovieLens release folder, e.g. ../shared/data/ml-100k")
    parser.add_argument("--format", default="ml-100k", choices=sorted(LAYOUTS))
    parser.add_argument("--synthetic", default="1000000,10000000", help="comma-separated synthetic sizes ('' for none)")
    parser.add_argument("--json", help="write the report here")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _measure(case: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process so peak memory belongs to this case alone."""
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if case["kind"] == "movielens":
        raw_ratings, raw_items = read_movielens(case["path"], case["format"])
    else:
        raw_ratings, raw_items = read_ratings_file(case["path"]), read_items_file(case["items_path"])
    read_seconds = time.perf_counter() - start
    items = validate_items(raw_items)
    ratings = validate_ratings(raw_ratings, np.asarray(items.valid["item_id"]))
    seconds = time.perf_counter() - start
    rows = len(raw_ratings)
    peak_extra = max(_peak_rss_bytes() - baseline, 0)
    return {
        "dataset": case["name"],
        "ratings": rows,
        "users": int(ratings.valid["user_id"].nunique()),
        "items": len(items.valid),
        "rejected": len(ratings.rejected) + len(items.rejected),
        "read_s": round(read_seconds, 3),
        "validate_s": round(seconds - read_seconds, 3),
        "total_s": round(seconds, 3),
        "ratings_per_s": round(rows / seconds),
        "peak_mem_mb": round(peak_extra / 2**20, 1),
        "peak_mem_mb_per_1M_rows": round(peak_extra / 2**20 / (rows / 1e6), 1),
        "source_mb": round(case["source_bytes"] / 2**20, 1),
        "peak_over_source": round(peak_extra / case["source_bytes"], 2),
    }


def _warm_up() -> None:
    """Imports the stack once before measuring: the first Great Expectations context is slow to build."""
    import great_expectations  # noqa: F401


def _run_case(case: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=_warm_up) as pool:
        return pool.apply(_measure, (case,))


def run(args: argparse.Namespace) -> int:
    cases: list[dict[str, Any]] = []
    if args.data_dir:
        folder = Path(args.data_dir)
        layout = LAYOUTS[args.format]
        size = (folder / layout.ratings_file).stat().st_size
        cases.append({"kind": "movielens", "name": args.format, "path": str(folder), "format": args.format, "source_bytes": size})
    with tempfile.TemporaryDirectory() as scratch:
        for size in [int(s) for s in args.synthetic.split(",") if s.strip()]:
            directory = Path(scratch) / f"synthetic-{size}"
            print(f"generating synthetic data: {size:,} ratings ...", flush=True)
            ratings_path, items_path = write_synthetic(directory, SyntheticConfig.scaled(size))
            cases.append({"kind": "synthetic", "name": f"synthetic-{size // 1_000_000}M" if size >= 1_000_000 else f"synthetic-{size}",
                          "path": str(ratings_path), "items_path": str(items_path), "source_bytes": ratings_path.stat().st_size})  # fmt: skip
        rows = []
        for case in cases:
            print(f"measuring {case['name']} ...", flush=True)
            rows.append(_run_case(case))
    write_report("ingest", rows, args.json, goals={"ratings_per_s": ">= 1,000,000 on 2 cores", "peak_over_source": "<= 4 (Parquet size)"},
                 notes="peak_mem = peak RSS of a fresh process minus its RSS after imports; source = the ratings file as read (Parquet for synthetic)")  # fmt: skip
    return 0
