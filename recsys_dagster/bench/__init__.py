"""Benchmarks that must drive Dagster itself (the whole graph); the measuring and reporting live in recsys_core.bench."""
