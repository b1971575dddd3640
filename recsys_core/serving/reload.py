"""Hot reload: watch a model source, load and validate a new model in the background, swap one reference.

A source is either a served directory (its files change when someone replaces it) or a registry alias
(`models:/<name>@champion`). A new model is served only after it loads and answers dummy requests; otherwise it
is refused, logged and remembered (not retried until the source changes again), and the old model keeps serving.
Requests read `holder.current` once, so a swap is a single atomic reference assignment.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import mlflow

from recsys_core.paths import recsys_home
from recsys_core.serving.scorer import MANIFEST, REQUIRED_FILES, ModelLoadError, OnnxScorer
from recsys_core.tracking import MlflowSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    scorer: OnnxScorer
    version: str
    token: str  # what the source reported when this model was loaded
    source: str
    loaded_at: float = field(default_factory=time.time)


class ModelSource(Protocol):
    def describe(self) -> str: ...

    def current_token(self) -> str:
        """Cheap: changes whenever the model behind the source changes."""
        ...

    def load(self, token: str, providers: str | list[str], threads: int = 0) -> OnnxScorer: ...


class DirectorySource:
    """A served directory; the token hashes where it resolves to and its files' sizes and modification times.

    Replace a served directory atomically (a symlink swap or a rename), not file by file; a token that changes
    while a model loads is retried at the next poll rather than served.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return f"dir:{self.directory}"

    def current_token(self) -> str:
        digest = hashlib.sha256(str(self.directory.resolve()).encode())
        for name in REQUIRED_FILES:
            path = self.directory / name
            stat = path.stat() if path.exists() else None
            digest.update(f"{name}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1};".encode())
        return digest.hexdigest()[:16]

    def load(self, token: str, providers: str | list[str], threads: int = 0) -> OnnxScorer:
        return OnnxScorer.from_dir(self.directory, providers=providers, intra_op_threads=threads)


def download_model_version(settings: MlflowSettings, version: str, cache_dir: Path) -> Path:
    """Downloads a registered version once into `cache_dir/<name>/<version>`; returns its serving directory."""
    target = cache_dir / settings.registered_model_name / str(version)
    serving_dir = target / "extra_files"
    if not (serving_dir / MANIFEST).exists():
        uri = settings.client().get_model_version_download_uri(settings.registered_model_name, str(version))
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(target), tracking_uri=settings.resolved_tracking_uri()
        )
        downloaded = next((p for p in [target, *target.iterdir()] if (p / "extra_files").is_dir()), None)
        if downloaded is None:
            raise ModelLoadError(f"registered version {version} has no serving files (extra_files/)")
        if downloaded != target:
            downloaded.joinpath("extra_files").rename(serving_dir)
    return serving_dir


class RegistrySource:
    """A registry alias; the token is the version number it points at."""

    def __init__(self, settings: MlflowSettings, alias: str, cache_dir: str | Path) -> None:
        self.settings, self.alias, self.cache_dir = settings, alias, Path(cache_dir)

    def describe(self) -> str:
        return f"models:/{self.settings.registered_model_name}@{self.alias}"

    def current_token(self) -> str:
        version = self.settings.client().get_model_version_by_alias(self.settings.registered_model_name, self.alias)
        return str(version.version)

    def load(self, token: str, providers: str | list[str], threads: int = 0) -> OnnxScorer:
        directory = download_model_version(self.settings, token, self.cache_dir)
        return OnnxScorer.from_dir(directory, providers=providers, intra_op_threads=threads, version=token)


class VersionSource(RegistrySource):
    """One registered version (an experiment arm `version:N`): its token never changes."""

    def __init__(self, settings: MlflowSettings, version: str, cache_dir: str | Path) -> None:
        super().__init__(settings, "", cache_dir)
        self.version = str(version)

    def describe(self) -> str:
        return f"models:/{self.settings.registered_model_name}/{self.version}"

    def current_token(self) -> str:
        return self.version


def load_scorer_from_registry(
    settings: MlflowSettings, alias: str = "champion", cache_dir: str | Path | None = None, providers: str | list[str] = "auto"
) -> tuple[OnnxScorer, str]:
    """(scorer, version) for `models:/<registered_model_name>@<alias>`, validated."""
    source = RegistrySource(settings, alias, cache_dir or recsys_home() / "cache" / "served_models")
    version = source.current_token()
    scorer = source.load(version, providers)
    scorer.validate()
    return scorer, version


class ModelHolder:
    """The one reference requests read. Writers (the reloader) swap it whole; readers never lock."""

    def __init__(self, initial: ServedModel) -> None:
        self.current = initial
        self.swaps = 0
        self.refused = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def swap(self, model: ServedModel) -> None:
        with self._lock:
            self.current = model
            self.swaps += 1
            self.last_error = None  # the failure it described is no longer what serves


def load_validated(source: ModelSource, token: str, providers: str | list[str], threads: int = 0) -> ServedModel:
    scorer = source.load(token, providers, threads)
    scorer.validate()
    return ServedModel(scorer=scorer, version=scorer.version, token=token, source=source.describe())


class Reloader:
    """Polls `source` every `interval_s` seconds on a daemon thread; `check_once` is the unit of work. Other periodic
    serving work (the tombstone refresh) rides the same `poller`, after `check_once`."""

    def __init__(
        self, holder: ModelHolder, source: ModelSource, interval_s: float, providers: str | list[str] = "auto", threads: int = 0
    ) -> None:
        self.holder, self.source, self.interval_s = holder, source, interval_s
        self.providers, self.threads = providers, threads
        self._refused_tokens: set[str] = set()
        self.poller = Poller(self.check_once, interval_s, "recsys-model-reloader")

    def check_once(self) -> str:
        """-> "unchanged", "swapped" or "refused"."""
        try:
            token = self.source.current_token()
        except Exception as error:  # registry unreachable: keep serving, try again next poll
            log.warning("model source %s not readable: %s", self.source.describe(), error)
            return "unchanged"
        if token == self.holder.current.token or token in self._refused_tokens:
            return "unchanged"
        try:
            model = load_validated(self.source, token, self.providers, self.threads)
        except Exception as error:  # any failure to load or validate refuses the model
            self._refused_tokens.add(token)
            self.holder.refused += 1
            self.holder.last_error = f"{self.source.describe()} ({token}): {error}"
            log.error("refused new model from %s (%s); still serving %s: %s",
                      self.source.describe(), token, self.holder.current.version, error)
            return "refused"
        if self.source.current_token() != token:
            log.warning("model source %s changed while loading; retrying at the next poll", self.source.describe())
            return "unchanged"
        previous = self.holder.current.version
        self.holder.swap(model)
        log.warning("hot reload: now serving %s (was %s) from %s", model.version, previous, self.source.describe())
        return "swapped"

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()


class Poller:
    """Calls each of its works in turn every `interval_s` seconds on one daemon thread (0 = never) until stopped.

    Works catch their own errors (an escaping one would end the thread); `add` lets a component ride an existing
    poller instead of starting a thread of its own."""

    def __init__(self, work: Callable[[], object], interval_s: float, name: str) -> None:
        self.works: tuple[Callable[[], object], ...] = (work,)
        self.interval_s, self.name = interval_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, work: Callable[[], object]) -> None:
        """Runs `work` after the works already there, from the next tick on."""
        self.works = (*self.works, work)

    def tick(self) -> None:
        for work in self.works:
            work()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
