"""Classic baselines, and the shared `MatrixRecommender` interface (the same as `ModelBundle`'s):
`recommend(user_ids, k, exclude_seen, candidates) -> DataFrame[user_id, item_id, rank, score]` and
`predict_ratings(user_ids, item_ids) -> ndarray`, so a benchmark treats every model alike.

- `MostPopular`: rank by training count; ratings from the damped baseline predictor (global mean + user and item
  biases shrunk towards 0, Koren 2010 sec. 2.1).
- `BiasedMF`: Funk-style biased matrix factorisation of explicit ratings (Koren, Bell, Volinsky 2009), trained with
  minibatch Adam on MSE + L2: what Surprise's SVD computes.
- `ImplicitALS`: weighted matrix factorisation for implicit feedback (Hu, Koren, Volinsky 2008), exact alternating
  least squares with confidence 1 + alpha for observed pairs. Kept (beside `implicit`'s ALS) because the hybrid
  uses it as its prior and it is exact and deterministic on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from recsys_core.schema import ITEM_ID, RATING, USER_ID, IdIndex

MAX_STEPS_PER_EPOCH = 1_000
# Every Adam step of `BiasedMF` reads and writes all its parameters, so a fit costs about steps x parameters (about
# 4.5 s per 1e9 on one core of this machine). At most this many: 40 epochs x 1,000 steps up to 0.5M parameters (about
# 300k ratings at ml-25m shape; the 1M synthetic run gets 325 steps); above, fewer and larger steps per epoch (never
# under `MIN_STEPS_PER_EPOCH`). Bounds time, not chosen for quality.
MAX_PARAMETER_STEPS = 2e10
MIN_STEPS_PER_EPOCH = 25
# Each `BiasedMF` epoch also gathers and scatters every training rating's factors: at most this many epochs x ratings
# per fit (40 epochs up to 1M training ratings), never under `MIN_MF_EPOCHS`. Bounds time, not chosen for quality.
MAX_MF_RATING_EPOCHS = 40_000_000
MIN_MF_EPOCHS = 3
# ALS (ours and `implicit`'s) visits every training rating twice per iteration: at most this many iterations x
# ratings per fit (15 iterations up to 1M training ratings). Bounds time, not chosen for quality.
MAX_ALS_RATING_ITERATIONS = 15_000_000
MIN_ALS_ITERATIONS = 3


def capped_iterations(iterations: int, n_ratings: int, budget: float, minimum: int) -> int:
    """`iterations`, or as many as `budget` rating visits allow for `n_ratings` (at least `minimum`): a fit whose
    cost grows with iterations x ratings stays bounded however large the data."""
    return min(iterations, max(minimum, int(budget // max(n_ratings, 1))))


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row the column indices of the `k` largest scores, descending, ties by column index: exactly the first `k`
    of a stable descending argsort, in time linear in the columns (a full sort of 62k items for 20k users took
    minutes per baseline at ml-25m scale). Scores must not be NaN; `k` <= columns."""
    if k == 0 or len(scores) == 0:
        return np.zeros((len(scores), k), dtype=np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth
    tied = scores == kth
    # of the items tied with the k-th score, the lowest indices fill the places left after the strictly larger ones
    places = k - above.sum(axis=1)
    chosen = above | tied
    crowded = np.flatnonzero(tied.sum(axis=1) > places)
    if len(crowded):
        chosen[crowded] = above[crowded] | (tied[crowded] & (np.cumsum(tied[crowded], axis=1) <= places[crowded, None]))
    columns = np.nonzero(chosen)[1].reshape(len(scores), k)
    values = np.take_along_axis(scores, columns, axis=1)
    return np.take_along_axis(columns, np.argsort(-values, axis=1, kind="stable"), axis=1)


class MatrixRecommender:
    """Shared fitting state (id indexes, seen items) and top-k/rating lookup over a dense score function."""

    predicts_ratings = True

    def __init__(self, seed: int = 42) -> None:
        self.seed = seed
        self.user_index = IdIndex(np.zeros(0, np.int64))
        self.item_index = IdIndex(np.zeros(0, np.int64))
        self.seen = sparse.csr_matrix((0, 0), dtype=bool)
        self.popularity = np.zeros(0)
        self.global_mean = 0.0
        self.rating_range = (1.0, 5.0)

    def _prepare(self, train: pd.DataFrame, items: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indexes users and items (the catalogue includes `items`), returns (user idx, item idx, ratings)."""
        missing = [c for c in (USER_ID, ITEM_ID, RATING) if c not in train.columns]
        if missing or train.empty:
            raise ValueError(f"train ratings must be non-empty with columns user_id, item_id, rating; missing {missing}")
        item_ids = train[ITEM_ID].to_numpy(np.int64)
        if items is not None and len(items):
            item_ids = np.concatenate([items[ITEM_ID].to_numpy(np.int64), item_ids])
        self.user_index = IdIndex.from_ids(train[USER_ID])
        self.item_index = IdIndex.from_ids(item_ids)
        u = self.user_index.encode(train[USER_ID].to_numpy())
        i = self.item_index.encode(train[ITEM_ID].to_numpy())
        r = train[RATING].to_numpy(np.float32)
        # sparse: a dense [users, items] mask is 10 GB at ml-25m scale
        self.seen = sparse.csr_matrix((np.ones(len(u), bool), (u, i)), shape=(len(self.user_index), len(self.item_index)))
        self.seen.sum_duplicates()
        self.popularity = np.bincount(i, minlength=len(self.item_index)).astype(np.float64)
        self.global_mean = float(r.mean())
        self.rating_range = (float(r.min()), float(r.max()))
        return u, i, r

    def _scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Ranking scores [len(user_idx), n_items]; index -1 is an unknown user (replaced by popularity)."""
        raise NotImplementedError

    def _ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Rating predictions per pair; index -1 is an unknown user or item."""
        raise NotImplementedError

    def recommend(
        self, user_ids: np.ndarray, k: int = 10, exclude_seen: bool = True, candidates: np.ndarray | None = None,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """Top-k per user, `batch_size` users at a time so the dense score block stays bounded at any catalogue size."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        allowed = None
        if candidates is not None:
            allowed = np.zeros(len(self.item_index), dtype=bool)
            allowed[self.item_index.encode(candidates)] = True
        k = min(k, len(self.item_index))
        frames = [self._recommend_batch(user_ids[start : start + batch_size], k, exclude_seen, allowed)
                  for start in range(0, len(user_ids), batch_size)]  # fmt: skip
        recs = pd.concat(frames, ignore_index=True) if frames else self._recs(user_ids, np.zeros((0, k), np.int64), np.zeros((0, k)))
        return recs[np.isfinite(recs["score"].to_numpy())].reset_index(drop=True)

    def _recommend_batch(self, user_ids: np.ndarray, k: int, exclude_seen: bool, allowed: np.ndarray | None) -> pd.DataFrame:
        idx = self.user_index.encode(user_ids, missing=-1)
        scores = self._scores(idx).astype(np.float64)
        # a user unknown to the model gets the most popular items, as the hybrid and serving do
        scores[idx < 0] = self.popularity
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        if exclude_seen:
            known = np.flatnonzero(idx >= 0)
            seen = self.seen[idx[known]].tocoo()
            scores[known[seen.row], seen.col] = -np.inf
        order = top_k_stable(scores, k)
        return self._recs(user_ids, order, np.take_along_axis(scores, order, axis=1))

    def _recs(self, user_ids: np.ndarray, order: np.ndarray, top: np.ndarray) -> pd.DataFrame:
        k = order.shape[1]
        return pd.DataFrame(
            {
                USER_ID: np.repeat(user_ids, k),
                ITEM_ID: self.item_index.decode(order.ravel()),
                "rank": np.tile(np.arange(1, k + 1), len(user_ids)),
                "score": top.ravel().astype(np.float32),
            }
        )

    def predict_ratings(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        u = self.user_index.encode(np.asarray(user_ids, dtype=np.int64), missing=-1)
        i = self.item_index.encode(np.asarray(item_ids, dtype=np.int64), missing=-1)
        return np.clip(self._ratings(u, i), *self.rating_range).astype(np.float32)


class MostPopular(MatrixRecommender):
    """Same list for everyone: the most-rated training items."""

    name = "most_popular"

    def __init__(self, damping: float = 10.0, seed: int = 42) -> None:
        super().__init__(seed)
        self.damping = damping
        self.user_bias = np.zeros(0)
        self.item_bias = np.zeros(0)

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> "MostPopular":
        u, i, r = self._prepare(train, items)
        residual = r - self.global_mean
        self.item_bias = np.bincount(i, residual, len(self.item_index)) / (self.popularity + self.damping)
        residual = residual - self.item_bias[i]
        user_counts = np.bincount(u, minlength=len(self.user_index))
        self.user_bias = np.bincount(u, residual, len(self.user_index)) / (user_counts + self.damping)
        return self

    def _scores(self, user_idx: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(user_idx), len(self.popularity))).copy()

    def _ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        user_bias = np.where(user_idx >= 0, self.user_bias[np.maximum(user_idx, 0)], 0.0)
        item_bias = np.where(item_idx >= 0, self.item_bias[np.maximum(item_idx, 0)], 0.0)
        return self.global_mean + user_bias + item_bias


@dataclass
class _Factors:
    users: np.ndarray  # [n_users, f]
    items: np.ndarray  # [n_items, f]
    user_bias: np.ndarray  # [n_users]
    item_bias: np.ndarray  # [n_items]


class _FactorModel(MatrixRecommender):
    """Scores u . v + b_i, rates mean + b_u + b_i + u . v; unknown users/items have zero factors and biases."""

    factors: _Factors

    def _user_rows(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = user_idx >= 0
        vectors = np.where(known[:, None], self.factors.users[np.maximum(user_idx, 0)], 0.0)
        bias = np.where(known, self.factors.user_bias[np.maximum(user_idx, 0)], 0.0)
        return vectors, bias

    def _scores(self, user_idx: np.ndarray) -> np.ndarray:
        vectors, _ = self._user_rows(user_idx)
        return vectors @ self.factors.items.T + self.factors.item_bias

    def _ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        vectors, user_bias = self._user_rows(user_idx)
        known = item_idx >= 0
        item_vectors = np.where(known[:, None], self.factors.items[np.maximum(item_idx, 0)], 0.0)
        item_bias = np.where(known, self.factors.item_bias[np.maximum(item_idx, 0)], 0.0)
        return self.global_mean + user_bias + item_bias + (vectors * item_vectors).sum(1)


class BiasedMF(_FactorModel):
    """Explicit-rating matrix factorisation with biases (the Surprise SVD model).

    reg 0.1 was chosen on a stratified seed-7 75/25 split of u.data (RMSE 0.920; 0.949 at the former 0.05).
    An epoch takes at most `MAX_STEPS_PER_EPOCH` steps (larger batches above 1M ratings), and fewer when the fit
    would exceed `MAX_PARAMETER_STEPS`: every Adam step updates the whole factor matrices, so at 25M ratings batches
    of 1024 would take hours; and it runs fewer epochs above `MAX_MF_RATING_EPOCHS`. `epochs_run` and
    `steps_per_epoch` say what the fit used.
    """

    name = "biased_mf"

    def __init__(
        self, dim: int = 64, epochs: int = 40, lr: float = 5e-3, reg: float = 0.1, batch_size: int = 1024, seed: int = 42
    ) -> None:
        super().__init__(seed)
        self.dim, self.epochs, self.lr, self.reg, self.batch_size = dim, epochs, lr, reg, batch_size

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> "BiasedMF":
        u, i, r = self._prepare(train, items)
        generator = torch.Generator().manual_seed(self.seed)
        n_users, n_items = len(self.user_index), len(self.item_index)
        P = (torch.randn(n_users, self.dim, generator=generator) * 0.1).requires_grad_()
        Q = (torch.randn(n_items, self.dim, generator=generator) * 0.1).requires_grad_()
        bu = torch.zeros(n_users, requires_grad=True)
        bi = torch.zeros(n_items, requires_grad=True)
        optimizer = torch.optim.Adam([P, Q, bu, bi], lr=self.lr)
        users, itemsx = torch.from_numpy(u), torch.from_numpy(i)
        target = torch.from_numpy(r - self.global_mean)
        self.epochs_run = capped_iterations(self.epochs, len(r), MAX_MF_RATING_EPOCHS, MIN_MF_EPOCHS)
        n_parameters = (n_users + n_items) * (self.dim + 1)
        affordable = int(MAX_PARAMETER_STEPS // (self.epochs_run * n_parameters))
        batch_size = max(self.batch_size, -(-len(r) // min(MAX_STEPS_PER_EPOCH, max(MIN_STEPS_PER_EPOCH, affordable))))
        self.steps_per_epoch = -(-len(r) // batch_size)
        for _ in range(self.epochs_run):
            order = torch.randperm(len(r), generator=generator)
            for start in range(0, len(r), batch_size):
                b = order[start : start + batch_size]
                pu, qi = P[users[b]], Q[itemsx[b]]
                pred = bu[users[b]] + bi[itemsx[b]] + (pu * qi).sum(1)
                penalty = (pu.pow(2).sum(1) + qi.pow(2).sum(1) + bu[users[b]] ** 2 + bi[itemsx[b]] ** 2).mean()
                loss = ((pred - target[b]) ** 2).mean() + self.reg * penalty
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.factors = _Factors(P.detach().numpy(), Q.detach().numpy(), bu.detach().numpy(), bi.detach().numpy())
        return self


class ImplicitALS(_FactorModel):
    """Implicit-feedback ALS: every rated item is a positive with confidence 1 + alpha, the rest 0 with confidence 1.

    Runs `iterations`, or fewer on large data (`MAX_ALS_RATING_ITERATIONS`); `iterations_run` says how many.
    """

    name = "implicit_als"
    predicts_ratings = False  # scores are preferences in [0, 1], not ratings

    def __init__(self, dim: int = 64, iterations: int = 15, alpha: float = 2.0, reg: float = 30.0, seed: int = 42) -> None:
        super().__init__(seed)
        self.dim, self.iterations, self.alpha, self.reg = dim, iterations, alpha, reg

    def _solve(self, fixed: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
        """x_u = (Y'Y + alpha Y_u'Y_u + reg I)^-1 (1 + alpha) Y_u' 1 for each row's positive items."""
        gram = fixed.T @ fixed + self.reg * np.eye(self.dim)
        out = np.zeros((len(rows), self.dim))
        for row, positives in enumerate(rows):
            if len(positives):
                y = fixed[positives]
                out[row] = np.linalg.solve(gram + self.alpha * (y.T @ y), (1.0 + self.alpha) * y.sum(0))
        return out

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> "ImplicitALS":
        u, i, _ = self._prepare(train, items)
        rng = np.random.default_rng(self.seed)
        n_users, n_items = len(self.user_index), len(self.item_index)
        by_user = np.split(i[np.argsort(u, kind="stable")], np.cumsum(np.bincount(u, minlength=n_users))[:-1])
        by_item = np.split(u[np.argsort(i, kind="stable")], np.cumsum(np.bincount(i, minlength=n_items))[:-1])
        users = rng.normal(0, 0.01, (n_users, self.dim))
        item_factors = rng.normal(0, 0.01, (n_items, self.dim))
        self.iterations_run = capped_iterations(self.iterations, len(u), MAX_ALS_RATING_ITERATIONS, MIN_ALS_ITERATIONS)
        for _ in range(self.iterations_run):
            users = self._solve(item_factors, by_user)
            item_factors = self._solve(users, by_item)
        self.factors = _Factors(users, item_factors, np.zeros(n_users), np.zeros(n_items))
        return self
