"""A seeded Optuna study per model: TPE sampler, median pruning on validation nDCG@k per epoch, budget by trials and
minutes, optionally one nested MLflow run per trial under the caller's active run.

Reproducible: for a seed, the TPE sampler proposes the same trials and (training being seeded) they score the same,
as long as the minutes budget does not cut the study short (a wall-clock limit depends on the machine); the enqueued
trials (the defaults and, for the hybrid, `SEQUENTIAL_TRIAL`) run whatever the minutes, so on a loaded machine the
search still picks between them as it would on a quiet one.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import mlflow
import numpy as np
import optuna
import pandas as pd

from recsys_core.baselines import RANKING_BASELINES
from recsys_core.metrics import ranking_metrics
from recsys_core.schema import USER_ID
from recsys_core.training import TextVectors, TrainConfig, train_hybrid
from recsys_core.tuning.space import BASELINE_SPACES, SEQUENTIAL_TRIAL, Space, has_knobs, hybrid_space


@dataclass(frozen=True)
class Budget:
    trials: int = 8
    minutes: float = 10.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.trials < 1 or self.minutes <= 0:
            raise ValueError(f"Budget needs trials >= 1 and minutes > 0, got {self.trials}, {self.minutes}")


@dataclass
class SearchResult:
    model: str
    best_params: dict[str, Any]
    best_value: float
    trials: pd.DataFrame  # number, state, value, seconds, params...
    best_attrs: dict[str, Any] = field(default_factory=dict)  # e.g. the hybrid's best epoch

    @property
    def n_pruned(self) -> int:
        return int((self.trials["state"] == "PRUNED").sum())


Objective = Callable[[dict[str, Any], optuna.Trial], float]


def _search(
    model: str, space: Space, objective: Objective, budget: Budget, log_mlflow: bool, *enqueued: dict[str, Any]
) -> SearchResult:
    """Trial 0 is the model's defaults (the first of `enqueued`), so a search never ends below them on validation;
    the other `enqueued` trials follow it. `budget.minutes` bounds only the sampled trials after them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=budget.seed, n_startup_trials=min(4, budget.trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3),
        study_name=f"{model}-seed{budget.seed}",
    )

    for params in enqueued:
        study.enqueue_trial(params, skip_if_exists=True)

    def run_trial(trial: optuna.Trial) -> float:
        params = space(trial)
        started = time.perf_counter()
        try:
            value = objective(params, trial)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            if log_mlflow and mlflow.active_run() is not None:
                _log_trial(model, trial, params)
        return value

    # the enqueued trials always run (the minutes never cut them, so a slow or loaded machine still compares the
    # defaults with the presets); the sampled ones fill what is left of both budgets
    started = time.perf_counter()
    guaranteed = min(len(enqueued), budget.trials)
    study.optimize(run_trial, n_trials=guaranteed, catch=())
    remaining = budget.minutes * 60 - (time.perf_counter() - started)
    if budget.trials > guaranteed and remaining > 0:
        study.optimize(run_trial, n_trials=budget.trials - guaranteed, timeout=remaining, catch=())
    frame = pd.DataFrame(
        [{"number": t.number, "state": t.state.name, "value": t.value, "seconds": t.user_attrs.get("seconds"), **t.params}
         for t in study.trials]
    )  # fmt: skip
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"search for {model}: no trial completed within {budget.trials} trials / {budget.minutes} min")
    best = max(complete, key=lambda t: (t.value, -t.number))
    return SearchResult(model, space(optuna.trial.FixedTrial(best.params)), float(best.value), frame, dict(best.user_attrs))


def _log_trial(model: str, trial: optuna.Trial, params: dict[str, Any]) -> None:
    """One nested run per trial: its parameters, validation nDCG per epoch (hybrid) and duration."""
    with mlflow.start_run(run_name=f"{model}-trial-{trial.number}", nested=True, tags={"tuning_model": model}):
        mlflow.log_params({**params, "trial": trial.number})
        for step, value in enumerate(trial.user_attrs.get("curve", []), start=1):
            mlflow.log_metric("val_ndcg_at_k", value, step=step)
        mlflow.log_metric("trial_seconds", trial.user_attrs.get("seconds", 0.0))


def validation_ndcg(model: Any, validation: pd.DataFrame, k: int) -> float:
    """nDCG@k of `model`'s top-k (training items excluded) for every validation user."""
    users = np.unique(validation[USER_ID].to_numpy(np.int64))
    return ranking_metrics(model.recommend(users, k=k, exclude_seen=True), validation, k)[f"ndcg@{k}"]


def tune_baseline(
    name: str, train: pd.DataFrame, validation: pd.DataFrame, items: pd.DataFrame | None, budget: Budget,
    k: int = 10, log_mlflow: bool = False,
) -> SearchResult:  # fmt: skip
    """Searches `RANKING_BASELINES[name]`'s space; a model with no knobs runs once."""
    space = BASELINE_SPACES[name]
    if not has_knobs(space):
        budget = replace(budget, trials=1)

    def objective(params: dict[str, Any], trial: optuna.Trial) -> float:
        return validation_ndcg(RANKING_BASELINES[name](**params, seed=budget.seed).fit(train, items), validation, k)

    signature = inspect.signature(RANKING_BASELINES[name])
    defaults = {key: p.default for key, p in signature.parameters.items() if key != "seed"}
    return _search(name, space, objective, budget, log_mlflow, defaults)


def tune_hybrid(
    train: pd.DataFrame, validation: pd.DataFrame, items: pd.DataFrame | None, text: TextVectors | None,
    base: TrainConfig, budget: Budget, log_mlflow: bool = False, space: Space = hybrid_space,
) -> SearchResult:  # fmt: skip
    """Searches `space` around `base`; each trial early-stops on validation nDCG@k and is pruned per epoch.

    `best_attrs["best_epoch"]` is the best trial's best epoch: what a refit on train + validation should run for;
    `best_params["prior_weight"]` is the weight that trial's training fitted on validation (`train_hybrid`).
    """

    def objective(params: dict[str, Any], trial: optuna.Trial) -> float:
        curve: list[float] = []

        def report(epoch: int, row: dict[str, float]) -> None:
            curve.append(row[f"val_ndcg@{base.k}"])
            trial.set_user_attr("curve", curve)
            trial.report(curve[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        config = replace(base, **params, seed=budget.seed, show_progress=False)
        result = train_hybrid(train, validation, items, text, config, on_epoch=report)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("prior_weight", result.bundle.config.prior_weight)
        return result.final_metrics[f"val_ndcg@{base.k}"]

    defaults = base.to_dict()
    result = _search("hybrid", space, objective, budget, log_mlflow, defaults, {**defaults, **SEQUENTIAL_TRIAL})
    if "prior_weight" in result.best_params:  # the weight training fitted on validation, not the sampled start
        result.best_params["prior_weight"] = result.best_attrs["prior_weight"]
    return result
