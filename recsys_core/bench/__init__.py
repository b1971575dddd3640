"""Benchmarks behind `recsys bench ...`: each writes JSON and prints a readable table. Goals live here, not in tests."""
