"""Ingest + validate throughput and peak memory: real MovieLens and the synthetic source at scale."""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq

from recsys_core.bench.report import write_report
from recsys_core.ingestion import LAYOUTS, ParquetRatingChunks, read_items_file, read_ratings_file
from recsys_core.synthetic import SyntheticConfig, write_synthetic
from recsys_core.validation import (
    FrameChunks,
    RatingChunks,
    ValidationOutcome,
    ValidationReport,
    validate_items,
    write_validated_ratings,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="a MovieLens release folder, e.g. ../shared/data/ml-100k")
    parser.add_argument("--format", default="ml-100k", choices=sorted(LAYOUTS))
    parser.add_argument("--synthetic", default="1000000,10000000", help="comma-separated synthetic sizes ('' for none)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--keep-data", help="generate the synthetic files here and keep them (reused when present)")


def _reset_peak_rss() -> None:
    """Linux keeps a process's high-water mark across fork and exec, so a spawned worker starts with its parent's
    peak; writing 5 to clear_refs resets it to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _chunks(case: dict[str, Any]) -> RatingChunks:
    if case["kind"] == "movielens":
        return FrameChunks(read_ratings_file(Path(case["path"]) / LAYOUTS[case["format"]].ratings_file, case["format"]))
    return ParquetRatingChunks(Path(case["path"]))


def _ingest(case: dict[str, Any], out: Path) -> tuple[ValidationOutcome, ValidationReport]:
    """What is timed: items and ratings from the source file to validated and rejected Parquet."""
    items = validate_items(read_items_file(case["items_path"], case["format"]))
    report = write_validated_ratings(_chunks(case), np.asarray(items.valid["item_id"]),
                                     out / "validated.parquet", out / "rejected.parquet")  # fmt: skip
    return items, report


def _measure(case: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process so peak memory belongs to this case alone."""
    with tempfile.TemporaryDirectory() as out:
        _reset_peak_rss()
        baseline = psutil.Process().memory_info().rss
        start = time.perf_counter()
        items, report = _ingest(case, Path(out))
        seconds = time.perf_counter() - start
        peak = _peak_rss_bytes()
        users = pq.read_table(Path(out) / "validated.parquet", columns=["user_id"]).column(0).unique()
    rows = report.valid_rows + report.rejected_rows
    peak_extra = max(peak - baseline, 0)
    return {
        "dataset": case["name"],
        "ratings": rows,
        "users": len(users),
        "items": len(items.valid),
        "rejected": report.rejected_rows + len(items.rejected),
        "total_s": round(seconds, 3),
        "ratings_per_s": round(rows / seconds),
        "peak_mem_mb": round(peak_extra / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "source_mb": round(case["source_bytes"] / 2**20, 1),
        "peak_over_source": round(peak_extra / case["source_bytes"], 2),
    }


def _warm_up() -> None:
    """Runs the measured path once on a few rows first: imports, GE's metric registry and Arrow's reader and writer
    are one-time costs of the process, not of the data."""
    with tempfile.TemporaryDirectory() as scratch:
        ratings, items = write_synthetic(Path(scratch) / "data", SyntheticConfig.scaled(2_000))
        _ingest({"kind": "synthetic", "path": str(ratings), "items_path": str(items), "format": "canonical"}, Path(scratch))


def _run_case(case: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=_warm_up) as pool:
        return pool.apply(_measure, (case,))


def _scaling(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Memory and time per extra million rows between the smallest and largest synthetic case: the fixed costs
    (the item catalogue, GE's first run of a suite, Arrow buffers) cancel out."""
    synthetic = sorted((r for r in rows if r["dataset"].startswith("synthetic")), key=lambda r: r["ratings"])
    if len(synthetic) < 2:
        return {}
    small, large = synthetic[0], synthetic[-1]
    million_rows = (large["ratings"] - small["ratings"]) / 1e6
    extra_mb = (large["peak_mem_mb"] - small["peak_mem_mb"]) / million_rows
    parquet_mb = (large["source_mb"] - small["source_mb"]) / million_rows
    extra_s = large["total_s"] - small["total_s"]  # small cases on a busy machine can tie or even invert
    return {"peak_mem_mb_per_extra_1M_rows": round(extra_mb, 1), "parquet_mb_per_1M_rows": round(parquet_mb, 1),
            "marginal_mem_over_parquet": round(extra_mb / parquet_mb, 2) if parquet_mb > 0 else None,
            "ratings_per_s_marginal": round(million_rows * 1e6 / extra_s) if extra_s > 0 else None}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    cases: list[dict[str, Any]] = []
    if args.data_dir:
        folder = Path(args.data_dir)
        layout = LAYOUTS[args.format]
        size = (folder / layout.ratings_file).stat().st_size
        cases.append({"kind": "movielens", "name": args.format, "path": str(folder), "format": args.format,
                      "items_path": str(folder / layout.items_file), "source_bytes": size})  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        for size in [int(s) for s in args.synthetic.split(",") if s.strip()]:
            directory = Path(args.keep_data or scratch) / f"synthetic-{size}"
            ratings_path, items_path = directory / "ratings.parquet", directory / "items.parquet"
            if not (ratings_path.exists() and items_path.exists()):
                print(f"generating synthetic data: {size:,} ratings ...", flush=True)
                ratings_path, items_path = write_synthetic(directory, SyntheticConfig.scaled(size))
            name = f"synthetic-{size // 1_000_000}M" if size >= 1_000_000 else f"synthetic-{size}"
            cases.append({"kind": "synthetic", "name": name, "path": str(ratings_path), "items_path": str(items_path),
                          "format": "canonical", "source_bytes": ratings_path.stat().st_size})  # fmt: skip
        rows = []
        for case in cases:
            print(f"measuring {case['name']} ...", flush=True)
            rows.append(_run_case(case))
    scaling = _scaling(rows)
    write_report("ingest", rows, args.json, scaling=scaling,
                 goals={"ratings_per_s": ">= 1,000,000 on 2 cores", "peak_over_source": "<= 4 (Parquet size)"},
                 notes="source file in, validated + rejected Parquet out; peak_mem = peak RSS minus the RSS after imports "
                       "and a warm-up run on 2,000 rows (peak_rss = the whole process); source = the ratings file as read "
                       "(Parquet for synthetic)")  # fmt: skip
    if scaling:
        print("scaling:", scaling)
    return 0
