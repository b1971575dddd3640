"""The three evaluation protocols of `recsys bench quality`, each a function of (ratings, seed).

Every protocol yields a search part (fit on `fit`, score on `validation`) and a test part (refit on `refit` =
fit + validation, score on `test`), so the test ratings never choose a setting.
- random: per-user stratified 75/25 (Microsoft Recommenders' protocol); validation = 15% of each user's 75%.
- temporal: the pipeline's own split (oldest 80% train, next 10% validation, newest 10% test).
- leave_last_out: each user's last rating is the test, the one before validation; full ranking, HR@10, nDCG@10.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from recsys_core.split import leave_last_out_split, stratified_random_split, temporal_split


@dataclass
class ProtocolSplit:
    fit: pd.DataFrame
    validation: pd.DataFrame
    refit: pd.DataFrame
    test: pd.DataFrame


def random_75_25(ratings: pd.DataFrame, seed: int) -> ProtocolSplit:
    outer = stratified_random_split(ratings, 0.0, 0.25, seed=seed)
    inner = stratified_random_split(outer.train, 0.0, 0.15, seed=seed)
    return ProtocolSplit(inner.train, inner.test, outer.train, outer.test)


def temporal(ratings: pd.DataFrame, seed: int) -> ProtocolSplit:
    split = temporal_split(ratings, 0.1, 0.1, seed=seed)
    return ProtocolSplit(split.train, split.validation, pd.concat([split.train, split.validation], ignore_index=True), split.test)


def leave_last_out(ratings: pd.DataFrame, seed: int) -> ProtocolSplit:
    split = leave_last_out_split(ratings, seed=seed)
    return ProtocolSplit(split.train, split.validation, pd.concat([split.train, split.validation], ignore_index=True), split.test)


PROTOCOLS = {"random 75/25": random_75_25, "temporal": temporal, "leave-last-out": leave_last_out}
