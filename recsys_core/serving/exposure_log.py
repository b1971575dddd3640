"""Exposure logging off the request path: a request hands its `Exposure` to a bounded queue and returns; one
background thread turns them into events and drains the queue in batches into the event store (one append, one
commit, per batch). Counts are of exposures, i.e. responses (one event each).

A full queue never blocks a request: the exposure is dropped and counted (`recsys_exposures_dropped{reason=
"queue_full"}`), as are batches the store refused three times (`reason="store_error"`). `close()` drains everything
queued before it returns, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from recsys_core.events.schema import Event
from recsys_core.events.store import EventStore
from recsys_core.experiments.exposures import Exposure

log = logging.getLogger(__name__)
QUEUE_FULL, STORE_ERROR = "queue_full", "store_error"


class ExposureLog:
    """`offer` from any request thread; `start` / `close` with the service. Also a Prometheus collector."""

    def __init__(
        self, store: EventStore, max_queue: int = 10_000, max_batch: int = 500, retries: int = 3, interval_s: float = 0.1
    ) -> None:
        """`interval_s`: after the first exposure of a batch, how long to collect more (fewer commits and wake-ups)."""
        self.store, self.max_batch, self.retries, self.interval_s = store, max_batch, retries, interval_s
        self._queue: queue.Queue[Exposure] = queue.Queue(max_queue)  # one entry per response
        self.logged = 0
        self.dropped = {QUEUE_FULL: 0, STORE_ERROR: 0}
        self._count_lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, exposure: Exposure) -> bool:
        """Queues one response's exposure; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(exposure)
        except queue.Full:
            with self._count_lock:
                self.dropped[QUEUE_FULL] += 1
            return False
        return True

    def _drain(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=0.2).event()]
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            self._closing.wait(self.interval_s)  # returns at once when closing
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait().event())
                except queue.Empty:
                    break
            self._write(batch)
            for _ in batch:
                self._queue.task_done()

    def _write(self, batch: list[Event]) -> None:
        for attempt in range(self.retries):
            try:
                self.store.append(batch)
            except Exception:
                log.exception("exposure log: event store %s refused %d events (attempt %d of %d)",
                              self.store.describe(), len(batch), attempt + 1, self.retries)  # fmt: skip
                time.sleep(0.1 * 2**attempt)
                continue
            with self._count_lock:
                self.logged += len(batch)
            return
        with self._count_lock:
            self.dropped[STORE_ERROR] += len(batch)

    def flush(self) -> None:
        """Waits until every queued exposure is in the store (or counted as dropped)."""
        self._queue.join()

    def start(self) -> None:
        if self._thread is None:
            self._closing.clear()
            self._thread = threading.Thread(target=self._drain, name="recsys-exposure-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Drains the queue into the store, then stops the thread."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def collect(self) -> Iterator[Metric]:
        logged = CounterMetricFamily("recsys_exposures_logged", "Exposures (responses) appended to the event store")
        logged.add_metric([], self.logged)
        yield logged
        dropped = CounterMetricFamily("recsys_exposures_dropped", "Exposures (responses) not logged, by reason", labels=["reason"])
        for reason, count in self.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily("recsys_exposure_queue_depth", "Responses waiting to be logged", value=self._queue.qsize())
