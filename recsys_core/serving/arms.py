"""Online experiments in the service: every running experiment's arms loaded (and hot-reloaded) next to the champion,
each user routed to an arm by the experiment's salted hash, and every experiment response logged as exposures.

Definitions come from the same SQLite file as `recsys experiments` (`ExperimentStore`), re-read every poll, so an
experiment created or stopped by the CLI is picked up within one interval, and by the admin endpoints at once. Arms
are registry references resolved to versions; one loaded model per version, shared by every arm (and the champion)
that points at it, so an item matrix is held once. An arm that cannot load pauses its experiment (its users get the
champion) rather than failing requests. Assignment needs no state: the same user gets the same arm after a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recsys_core.experiments.assignment import OUTSIDE, Assigner
from recsys_core.experiments.definitions import ExperimentDefinition, ExperimentStore
from recsys_core.experiments.exposures import Exposure
from recsys_core.serving.exposure_log import ExposureLog
from recsys_core.serving.reload import ModelHolder, ModelSource, Poller, RegistrySource, ServedModel, VersionSource, load_validated
from recsys_core.serving.scorer import Recommendations
from recsys_core.tracking import MlflowSettings

log = logging.getLogger(__name__)

# An arm's registry reference (`alias:challenger`, `version:7`) -> where its model comes from.
SourceOf = Callable[[str], ModelSource]


def registry_sources(settings: MlflowSettings, cache_dir: str | Path) -> SourceOf:
    def source_of(ref: str) -> ModelSource:
        kind, _, value = ref.partition(":")
        return VersionSource(settings, value, cache_dir) if kind == "version" else RegistrySource(settings, value, cache_dir)

    return source_of


class RegistryUnreadable(RuntimeError):
    """The registry did not answer: an experiment keeps the arms it already loaded."""


@dataclass(frozen=True)
class Routed:
    """Who serves one request: an experiment's arm and its model."""

    experiment: str
    arm: str
    model: ServedModel


@dataclass(frozen=True)
class RunningExperiment:
    definition: ExperimentDefinition
    models: dict[str, ServedModel]
    assign: Assigner


class ExperimentArms:
    """`route(user_id)` on the request path reads one list reference; `refresh()` (poller, admin endpoints) rebuilds it."""

    def __init__(
        self, holder: ModelHolder, store: ExperimentStore, source_of: SourceOf, exposures: ExposureLog, *,
        interval_s: float = 10.0, providers: str | list[str] = "auto", threads: int = 0,
    ) -> None:  # fmt: skip
        self.holder, self.store, self.source_of, self.exposures = holder, store, source_of, exposures
        self.providers, self.threads = providers, threads
        self.running: list[RunningExperiment] = []
        self.errors: dict[str, str] = {}  # experiment -> why it is paused
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._poller = Poller(self.refresh, interval_s, "recsys-experiment-arms")

    def refresh(self) -> list[str]:
        """Re-reads the running experiments and loads any arm version not loaded yet; -> the experiments now served."""
        with self._lock:
            try:
                definitions = self.store.list(running_only=True)
            except Exception:  # the definitions file is unreadable now: keep serving what runs, retry next poll
                log.exception("experiment definitions %s not readable; keeping %d running", self.store.path, len(self.running))
                return [r.definition.name for r in self.running]
            previous = {r.definition.name: r for r in self.running}
            pool = {self.holder.current.token: self.holder.current}
            for running in self.running:
                pool.update({m.token: m for m in running.models.values()})
            fresh, errors = [], {}
            for definition in definitions:
                try:
                    models = {arm: self._model(ref, pool) for arm, ref in definition.arms.items()}
                except Exception as error:  # an arm that cannot serve pauses its experiment, nothing else
                    errors[definition.name] = str(error)
                    log.error("experiment %s paused (its users get the champion): %s", definition.name, error)
                    kept = previous.get(definition.name)
                    if kept is not None and kept.definition == definition and isinstance(error, RegistryUnreadable):
                        fresh.append(kept)  # the registry is unreachable: keep serving what was loaded
                    continue
                fresh.append(RunningExperiment(definition, models, Assigner(definition.effective_salt, definition.shares)))
            self.running, self.errors = fresh, errors
            return [r.definition.name for r in fresh]

    def _model(self, ref: str, pool: dict[str, ServedModel]) -> ServedModel:
        source = self.source_of(ref)
        try:
            token = source.current_token()
        except Exception as error:
            raise RegistryUnreadable(f"{source.describe()} not readable: {error}") from error
        if token in self._refused:
            raise RuntimeError(f"{source.describe()} (version {token}) was refused earlier")
        if token not in pool:
            try:
                pool[token] = load_validated(source, token, self.providers, self.threads)
            except Exception as error:
                self._refused.add(token)
                raise RuntimeError(f"{source.describe()} (version {token}) refused: {error}") from error
            log.warning("experiment arm %s: loaded version %s", ref, token)
        return pool[token]

    def check_refs(self, refs: list[str]) -> list[str]:
        """Problems resolving arm references (for the admin endpoint's 422), without loading anything."""
        problems = []
        for ref in refs:
            try:
                self.source_of(ref).current_token()
            except Exception as error:
                problems.append(f"{ref}: {error}")
        return problems

    def route(self, user_id: int | None) -> Routed | None:
        """The first running experiment whose shares include the user; None = the champion, outside any experiment."""
        if user_id is None:
            return None
        for running in self.running:
            arm = running.assign(user_id)
            if arm != OUTSIDE:
                return Routed(running.definition.name, arm, running.models[arm])
        return None

    def log(self, routed: Routed, request_id: str, user_id: int, recs: Recommendations, latency_ms: float, at: float) -> None:
        self.exposures.offer(Exposure(routed.experiment, routed.arm, routed.model.version, request_id, user_id, recs.item_ids,
                                      at, latency_ms, recs.source == "popularity"))  # fmt: skip

    def start(self) -> None:
        self.refresh()
        self.exposures.start()
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()
        self.exposures.close()
