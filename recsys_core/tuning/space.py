"""Search spaces: a function of an Optuna trial returning constructor keyword arguments.

Ranges are wide on purpose (orders of magnitude on a log scale) so that they hold beyond ml-100k; the defaults of
each model sit inside its range.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

Space = Callable[[optuna.Trial], dict[str, Any]]


def hybrid_space(trial: optuna.Trial) -> dict[str, Any]:
    """The `TrainConfig` knobs that moved validation nDCG most when they were hand-tuned, and which prior to use."""
    params = {
        "lr": trial.suggest_float("lr", 1e-3, 2e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 0.01, 1.0, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "history_keep": trial.suggest_float("history_keep", 0.3, 0.8),
        "prior": trial.suggest_categorical("prior", ["als", "ease"]),
        "prior_weight": trial.suggest_float("prior_weight", 1.0, 30.0, log=True),
    }
    if params["prior"] == "ease":
        params["prior_reg"] = trial.suggest_float("prior_reg", 10.0, 5000.0, log=True)
    return params


BASELINE_SPACES: dict[str, Space] = {
    "most_popular": lambda trial: {},
    "ease": lambda trial: {"reg": trial.suggest_float("reg", 10.0, 5000.0, log=True)},
    "rp3beta": lambda trial: {
        "alpha": trial.suggest_float("alpha", 0.3, 1.5),
        "beta": trial.suggest_float("beta", 0.0, 0.8),
        "neighbours": trial.suggest_int("neighbours", 20, 500, log=True),
    },
    "als": lambda trial: {
        "dim": trial.suggest_categorical("dim", [32, 64, 128]),
        "reg": trial.suggest_float("reg", 0.01, 100.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.5, 50.0, log=True),
    },
    "bpr": lambda trial: {
        "dim": trial.suggest_categorical("dim", [32, 64, 128]),
        "lr": trial.suggest_float("lr", 0.005, 0.1, log=True),
        "reg": trial.suggest_float("reg", 1e-4, 0.1, log=True),
        "iterations": trial.suggest_int("iterations", 50, 300, log=True),
    },
    "implicit_als": lambda trial: {
        "dim": trial.suggest_categorical("dim", [32, 64]),
        "reg": trial.suggest_float("reg", 1.0, 100.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.5, 20.0, log=True),
    },
}


def has_knobs(space: Space) -> bool:
    """False for a space that suggests nothing (one trial is then the whole search)."""
    try:
        return bool(space(optuna.trial.FixedTrial({})))
    except ValueError:  # FixedTrial lacks the parameter the space suggests
        return True
