"""Experiment definitions: what is compared, on which traffic, judged how; persisted in SQLite under $RECSYS_HOME so
they survive restarts and every process (service, Dagster, CLI) reads the same ones."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_core.experiments.online import METRICS, Guardrail, OnlineAnalysis, analyse
from recsys_core.paths import recsys_home

RUNNING, STOPPED = "running", "stopped"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODEL_REF = re.compile(r"^(alias:[A-Za-z0-9_-]+|version:[0-9]+)$")


def default_guardrails() -> list[Guardrail]:
    return [Guardrail("latency_p99_ms", 0.10), Guardrail("fallback_rate", 0.10), Guardrail("coverage", 0.20, True)]


@dataclass(frozen=True)
class ExperimentDefinition:
    """`arms` maps arm name -> registry reference (`alias:champion` or `version:7`); the first arm is the control.
    `mixture_sd` is the sd of the mSPRT's normal mixture, in units of the primary metric: about the effect size
    the experiment should detect quickly."""

    name: str
    arms: dict[str, str]
    shares: dict[str, float]
    salt: str = ""
    start_time: float = 0.0
    primary_metric: str = "ctr"
    guardrails: list[Guardrail] = field(default_factory=default_guardrails)
    min_users_per_arm: int = 200
    alpha: float = 0.05
    mixture_sd: float = 0.02
    attribution_window_s: float = 3600.0
    status: str = RUNNING
    stopped_at: float | None = None
    stop_reason: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name {self.name!r}: letters, digits, '_', '.', '-', at most 64")
        if len(self.arms) != 2:
            problems.append(f"arms: exactly two (control first, then treatment), got {list(self.arms)}")
        problems += [f"arms.{arm}: {ref!r} is not alias:NAME or version:N" for arm, ref in self.arms.items()
                     if not _MODEL_REF.match(ref)]  # fmt: skip
        if set(self.shares) != set(self.arms):
            problems.append(f"shares: one per arm {list(self.arms)}, got {list(self.shares)}")
        elif any(not 0 < s <= 1 for s in self.shares.values()) or sum(self.shares.values()) > 1 + 1e-9:
            problems.append(f"shares: each in (0, 1], summing to at most 1, got {self.shares}")
        if self.primary_metric not in METRICS:
            problems.append(f"primary_metric {self.primary_metric!r}: one of {list(METRICS)}")
        if not 0 < self.alpha < 1:
            problems.append(f"alpha {self.alpha}: in (0, 1)")
        if not (self.mixture_sd > 0 and math.isfinite(self.mixture_sd)):
            problems.append(f"mixture_sd {self.mixture_sd}: > 0")
        if self.min_users_per_arm < 1:
            problems.append(f"min_users_per_arm {self.min_users_per_arm}: >= 1")
        if self.status not in (RUNNING, STOPPED):
            problems.append(f"status {self.status!r}: {RUNNING} or {STOPPED}")
        if problems:
            raise ValueError(f"experiment {self.name!r}: " + "; ".join(problems))

    @property
    def control(self) -> str:
        return next(iter(self.arms))

    @property
    def treatment(self) -> str:
        return list(self.arms)[1]

    @property
    def effective_salt(self) -> str:
        """Defaults to the name, so two experiments never share an assignment by accident."""
        return self.salt or self.name

    def analyse(
        self, users: pd.DataFrame, *, previous_p: float = 1.0, guardrail_values: dict[str, dict[str, float]] | None = None
    ) -> OnlineAnalysis:
        """One look at this experiment's per-user table, judged by its own settings."""
        return analyse(
            users, control=self.control, treatment=self.treatment, shares=self.shares, primary_metric=self.primary_metric,
            tau=self.mixture_sd, alpha=self.alpha, min_users_per_arm=self.min_users_per_arm, guardrails=self.guardrails,
            guardrail_values=guardrail_values, previous_p=previous_p,
        )  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self))  # key order kept: the first arm is the control

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentDefinition:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"experiment definition: unknown field(s) {sorted(unknown)}")
        rails = [Guardrail(**rail) for rail in data.get("guardrails", [])] if "guardrails" in data else default_guardrails()
        return cls(**{**data, "guardrails": rails})


class ExperimentStore:
    """One SQLite table, one row per experiment holding its JSON definition; names are unique forever (a stopped
    experiment keeps its name, so its results stay attributable)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else recsys_home() / "experiments.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, definition TEXT NOT NULL)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # commits, or rolls back on error
                yield db
        finally:
            db.close()

    def create(self, definition: ExperimentDefinition) -> ExperimentDefinition:
        if not definition.start_time:
            definition = replace(definition, start_time=time.time())
        try:
            with self._connect() as db:
                db.execute("INSERT INTO experiments VALUES (?, ?)", (definition.name, definition.to_json()))
        except sqlite3.IntegrityError:
            raise ValueError(f"experiment {definition.name!r} already exists in {self.path}") from None
        return definition

    def get(self, name: str) -> ExperimentDefinition:
        with self._connect() as db:
            row = db.execute("SELECT definition FROM experiments WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"no experiment {name!r} in {self.path}")
        return ExperimentDefinition.from_dict(json.loads(row[0]))

    def list(self, *, running_only: bool = False) -> list[ExperimentDefinition]:
        with self._connect() as db:
            rows = db.execute("SELECT definition FROM experiments ORDER BY name").fetchall()
        found = [ExperimentDefinition.from_dict(json.loads(row[0])) for row in rows]
        return [e for e in found if e.status == RUNNING] if running_only else found

    def stop(self, name: str, reason: str = "") -> ExperimentDefinition:
        current = self.get(name)
        if current.status == STOPPED:
            return current
        stopped = replace(current, status=STOPPED, stopped_at=time.time(), stop_reason=reason)
        with self._connect() as db:
            db.execute("UPDATE experiments SET definition = ? WHERE name = ?", (stopped.to_json(), name))
        return stopped
