"""Stable user-to-arm assignment: a salted hash, so a user sees the same arm across runs, machines and processes."""

from __future__ import annotations

import hashlib

import numpy as np


def assign_arms(user_ids: np.ndarray, salt: str = "recsys-ab") -> np.ndarray:
    """True = challenger arm. splitmix64 of (user id XOR salt hash): stable across runs, machines and processes."""
    salt_key = np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        z = np.asarray(user_ids, dtype=np.int64).astype(np.uint64) ^ salt_key
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)).astype(bool)
