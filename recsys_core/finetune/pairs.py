"""Co-consumed item pairs mined from the training ratings: many more training signals for the text fine-tune than the one
collaborative vector per item (each warm item has up to `k` neighbours, so text of items liked together can be pulled
together with in-batch negatives).

Only items with training ratings can appear, so the validation and test items of a cold-item split, whose ratings all
leave training, never do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_core.schema import ITEM_ID, USER_ID

BLOCK = 1024


@dataclass(frozen=True)
class Neighbours:
    """Per item (rows follow `item_ids`): up to `k` co-consumed items as row indices, best first; `valid` marks the
    real ones (an item with fewer qualifying neighbours is padded with invalid entries)."""

    item_ids: np.ndarray
    rows: np.ndarray  # [n_items, k] int64
    valid: np.ndarray  # [n_items, k] bool

    def has_any(self) -> np.ndarray:
        return self.valid.any(axis=1)

    def sample(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One valid neighbour (uniformly) per anchor row; every anchor must have one (see `has_any`)."""
        counts = self.valid[anchors].sum(axis=1)
        if (counts == 0).any():
            raise ValueError("every anchor needs at least one neighbour")
        picks = (rng.random(len(anchors)) * counts).astype(np.int64)
        # valid entries come first in each row (sorted by similarity, invalid ones after), so the i-th valid is column i
        return self.rows[anchors, picks]


def cooccurrence_neighbours(
    train: pd.DataFrame, item_ids: np.ndarray, k: int = 20, shrink: float = 10.0, min_common: int = 2
) -> Neighbours:
    """Top-`k` neighbours of each of `item_ids` (sorted) by shrunk cosine of their binary user vectors in `train`:
    |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink), pairs with fewer than `min_common` common users dropped.

    The shrinkage keeps two rarely rated items that share one user from outranking popular, truly co-consumed pairs.
    Ties break by item order, so the result depends only on the ratings.
    """
    if k < 1:
        raise ValueError(f"k={k}: need at least one neighbour")
    item_ids = np.asarray(item_ids, np.int64)
    known = train[train[ITEM_ID].isin(item_ids)]
    users, user_rows = np.unique(known[USER_ID].to_numpy(np.int64), return_inverse=True)
    item_rows = np.searchsorted(item_ids, known[ITEM_ID].to_numpy(np.int64))
    interactions = sp.csr_matrix(
        (np.ones(len(known), np.float64), (user_rows, item_rows)), shape=(len(users), len(item_ids))
    )
    interactions.data[:] = 1.0  # repeated (user, item) ratings count once
    by_item = interactions.T.tocsr()
    counts = np.asarray(by_item.sum(axis=1)).ravel()
    k = min(k, max(len(item_ids) - 1, 1))
    rows = np.zeros((len(item_ids), k), np.int64)
    valid = np.zeros((len(item_ids), k), bool)
    for start in range(0, len(item_ids), BLOCK):  # blocks keep memory at BLOCK x n_items, not n_items^2
        stop = min(start + BLOCK, len(item_ids))
        common = (by_item[start:stop] @ interactions).toarray()
        similarity = common / (np.sqrt(np.outer(counts[start:stop], counts)) + shrink)
        similarity[common < min_common] = 0.0
        similarity[np.arange(stop - start), np.arange(start, stop)] = 0.0
        best = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        rows[start:stop] = best
        valid[start:stop] = np.take_along_axis(similarity, best, axis=1) > 0.0
    return Neighbours(item_ids, rows, valid)
