"""ALS and BPR from the `implicit` package (Frederickson), the well-kept CPU/GPU implementations.

Both are fitted on the binary user x item matrix of training ratings, on one thread with a fixed `random_state`
so a seed gives the same factors (BPR's multi-threaded SGD is not reproducible). Scores are the plain dot product
of the library's factors (BPR's item factors carry its item bias as the last column, the user's is 1).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse
from threadpoolctl import threadpool_limits

from recsys_core.baselines.classic import MAX_ALS_RATING_ITERATIONS, MIN_ALS_ITERATIONS, _Factors, _FactorModel, capped_iterations

# BPR's SGD draws one (positive, negative) pair per training rating per iteration: at most this many pairs per fit
# (100 iterations up to 1M training ratings), never under `MIN_BPR_ITERATIONS`. Bounds time, not chosen for quality.
MAX_BPR_SAMPLES = 100_000_000
MIN_BPR_ITERATIONS = 3


class _ImplicitLibModel(_FactorModel):
    predicts_ratings = False

    def _model(self, n_ratings: int):
        raise NotImplementedError

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> "_ImplicitLibModel":
        u, i, _ = self._prepare(train, items)
        matrix = sparse.csr_matrix(
            (np.ones(len(u), np.float32), (u, i)), shape=(len(self.user_index), len(self.item_index))
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit warns about OpenBLAS threads from the environment even inside the limit above
            warnings.simplefilter("ignore", RuntimeWarning)
            model = self._model(matrix.nnz)
            model.fit(matrix, show_progress=False)
        users, items_ = np.asarray(model.user_factors), np.asarray(model.item_factors)
        self.factors = _Factors(users, items_, np.zeros(len(users)), np.zeros(len(items_)))
        return self


class LibALS(_ImplicitLibModel):
    """`implicit.cpu.als.AlternatingLeastSquares` (conjugate-gradient ALS, confidence 1 + alpha); `iterations`, or
    fewer on large data (`MAX_ALS_RATING_ITERATIONS`): `iterations_run` says how many."""

    name = "als"

    def __init__(self, dim: int = 64, reg: float = 0.05, alpha: float = 10.0, iterations: int = 15, seed: int = 42) -> None:
        super().__init__(seed)
        self.dim, self.reg, self.alpha, self.iterations = dim, reg, alpha, iterations

    def _model(self, n_ratings: int):
        from implicit.cpu.als import AlternatingLeastSquares

        self.iterations_run = capped_iterations(self.iterations, n_ratings, MAX_ALS_RATING_ITERATIONS, MIN_ALS_ITERATIONS)
        return AlternatingLeastSquares(factors=self.dim, regularization=self.reg, alpha=self.alpha,
                                       iterations=self.iterations_run, num_threads=1, random_state=self.seed)  # fmt: skip


class LibBPR(_ImplicitLibModel):
    """`implicit.cpu.bpr.BayesianPersonalizedRanking` (SGD on sampled (positive, negative) pairs); `iterations`, or
    fewer on large data (`MAX_BPR_SAMPLES`): `iterations_run` says how many."""

    name = "bpr"

    def __init__(self, dim: int = 64, lr: float = 0.05, reg: float = 0.01, iterations: int = 100, seed: int = 42) -> None:
        super().__init__(seed)
        self.dim, self.lr, self.reg, self.iterations = dim, lr, reg, iterations

    def _model(self, n_ratings: int):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        self.iterations_run = capped_iterations(self.iterations, n_ratings, MAX_BPR_SAMPLES, MIN_BPR_ITERATIONS)
        return BayesianPersonalizedRanking(factors=self.dim, learning_rate=self.lr, regularization=self.reg,
                                           iterations=self.iterations_run, num_threads=1, random_state=self.seed)  # fmt: skip
