"""Reproducible train / validation / test splits of a ratings table.

- `temporal_split`: one global time cut-off (what production sees: train on the past, test on the future).
- `stratified_random_split`: per-user random split (Microsoft Recommenders' `python_stratified_split`): every
  user keeps about the same fraction in each part, so every test user also has training data.
- `leave_last_out_split`: each user's latest rating is test, the one before validation.

Ties (equal timestamps) are broken by a seeded random key, so every split is a pure function of (ratings, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_core.schema import RATING_COLUMNS, TIMESTAMP, USER_ID

STRATEGIES = ("temporal", "random", "leave_last_out")


@dataclass
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _check(ratings: pd.DataFrame, validation_fraction: float, test_fraction: float) -> None:
    missing = [c for c in RATING_COLUMNS if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings lack the canonical columns {missing}")
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError(
            f"fractions must be in [0, 1) with a non-empty train part: validation={validation_fraction}, test={test_fraction}"
        )


def _parts(ratings: pd.DataFrame, part: np.ndarray) -> Split:
    """part: 0 train, 1 validation, 2 test per row of `ratings`."""
    frames = [ratings.loc[part == p, list(RATING_COLUMNS)].reset_index(drop=True) for p in (0, 1, 2)]
    return Split(*frames)


def temporal_split(
    ratings: pd.DataFrame, validation_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> Split:
    """The oldest ratings train, the next `validation_fraction` validate, the newest `test_fraction` test."""
    _check(ratings, validation_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(ratings)), ratings[TIMESTAMP].to_numpy()))
    n = len(ratings)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * validation_fraction))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    part = np.where(position >= n - n_test, 2, np.where(position >= n - n_test - n_val, 1, 0))
    return _parts(ratings, part)


def stratified_random_split(
    ratings: pd.DataFrame, validation_fraction: float = 0.0, test_fraction: float = 0.25, seed: int = 42
) -> Split:
    """Per user: shuffle (seeded), the first share trains, then validation, then test (rounded per user)."""
    _check(ratings, validation_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    users = ratings[USER_ID].to_numpy()
    order = np.lexsort((rng.random(len(ratings)), users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    size = np.repeat(counts, counts)
    n_train = np.round(size * (1 - validation_fraction - test_fraction))
    n_val = np.round(size * (1 - test_fraction)) - n_train
    part_sorted = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2))
    part = np.empty(len(ratings), dtype=np.int64)
    part[order] = part_sorted
    return _parts(ratings, part)


def leave_last_out_split(ratings: pd.DataFrame, seed: int = 42) -> Split:
    """Each user's latest rating tests and the one before validates; users need 3 ratings to give up 2."""
    _check(ratings, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"u": ratings[USER_ID].to_numpy(), "t": ratings[TIMESTAMP].to_numpy(), "k": rng.random(len(ratings))})
    frame = frame.sort_values(["u", "t", "k"], kind="stable")
    from_end = frame.groupby("u").cumcount(ascending=False).to_numpy()
    count = frame.groupby("u")["t"].transform("size").to_numpy()
    part_sorted = np.where((from_end == 0) & (count >= 2), 2, np.where((from_end == 1) & (count >= 3), 1, 0))
    part = np.empty(len(ratings), dtype=np.int64)
    part[frame.index.to_numpy()] = part_sorted
    return _parts(ratings.reset_index(drop=True), part)


def split_ratings(
    ratings: pd.DataFrame, strategy: str, validation_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Dispatch by strategy name ('temporal', 'random' or 'leave_last_out'; the latter ignores the fractions)."""
    if strategy == "temporal":
        return temporal_split(ratings, validation_fraction, test_fraction, seed)
    if strategy == "random":
        return stratified_random_split(ratings, validation_fraction, test_fraction, seed)
    if strategy == "leave_last_out":
        return leave_last_out_split(ratings, seed)
    raise ValueError(f"unknown split strategy {strategy!r}; expected one of {STRATEGIES}")
