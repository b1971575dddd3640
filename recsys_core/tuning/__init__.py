"""Hyperparameter search on a validation split (Optuna TPE, per-epoch pruning), for the hybrid and every baseline.

`space`: what each model's search may change; `search`: the seeded study, its budget (trials and minutes) and the
objective (validation nDCG@k, never test). Every model gets the same `Budget`, so a comparison is fair.
"""

from recsys_core.tuning.search import Budget, SearchResult, tune_baseline, tune_hybrid
from recsys_core.tuning.space import BASELINE_SPACES, hybrid_space

__all__ = ["BASELINE_SPACES", "Budget", "SearchResult", "hybrid_space", "tune_baseline", "tune_hybrid"]
