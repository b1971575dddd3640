"""Stable user-to-arm assignment: a salted hash, so a user sees the same arm across runs, machines, processes and
service restarts, with no assignment table to store."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping

import numpy as np

_MASK = (1 << 64) - 1
OUTSIDE = ""  # users beyond the experiment's total traffic share: served the champion, not analysed


def _salt_key(salt: str) -> int:
    return int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")


def _salted_hash(user_ids: np.ndarray, salt: str) -> np.ndarray:
    """splitmix64 of (user id XOR salt hash), as uint64."""
    salt_key = np.uint64(_salt_key(salt))
    with np.errstate(over="ignore"):
        z = np.asarray(user_ids, dtype=np.int64).astype(np.uint64) ^ salt_key
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def assign_arms(user_ids: np.ndarray, salt: str = "recsys-ab") -> np.ndarray:
    """True = challenger arm, a 50/50 split on the hash's lowest bit."""
    return (_salted_hash(user_ids, salt) & np.uint64(1)).astype(bool)


def _cumulative(shares: Mapping[str, float]) -> np.ndarray:
    values = np.asarray(list(shares.values()), dtype=np.float64)
    if (values < 0).any() or values.sum() > 1 + 1e-9:
        raise ValueError(f"traffic shares must be >= 0 and sum to at most 1, got {dict(shares)}")
    return np.cumsum(values)


def assign_shares(user_ids: np.ndarray, salt: str, shares: Mapping[str, float]) -> np.ndarray:
    """Arm name per user: the hash's top 53 bits as a uniform number in [0, 1), cut at the cumulative shares (in the
    mapping's order). Shares may sum to less than 1; the rest of the users get `OUTSIDE`."""
    cumulative = _cumulative(shares)
    uniform = (_salted_hash(user_ids, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    names = np.array([*shares, OUTSIDE], dtype=object)
    return names[np.searchsorted(cumulative, uniform, side="right")]


class Assigner:
    """`assign_shares` for one user at a time in plain integers, for the request path (numpy on one-element arrays
    costs more than the whole hash); the same arm for every user."""

    def __init__(self, salt: str, shares: Mapping[str, float]) -> None:
        self.salt_key, self.bounds, self.names = _salt_key(salt), _cumulative(shares).tolist(), [*shares, OUTSIDE]

    def __call__(self, user_id: int) -> str:
        z = ((user_id & _MASK) ^ self.salt_key) + 0x9E3779B97F4A7C15 & _MASK
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
        z ^= z >> 31
        return self.names[bisect.bisect_right(self.bounds, (z >> 11) / float(1 << 53))]
