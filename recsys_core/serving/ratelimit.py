"""Token buckets per API key (and per client address for anonymous reads): 429 with `Retry-After` when one is empty.

A bucket holds up to `burst` tokens and refills at `rate` per second; each request takes one. The clock is injectable
so a test can empty a bucket and refill it without sleeping. Anonymous buckets are keyed by address, so their number
is capped: the least recently used one is dropped first (an idle bucket is full anyway once `burst / rate` passed).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric


@dataclass(frozen=True)
class RateLimit:
    rate: float  # tokens per second
    burst: float  # bucket size: requests allowed at once after an idle period

    @classmethod
    def parse(cls, entry: object, where: str) -> RateLimit | None:
        """`{"rate": R, "burst": B}` (burst defaults to max(1, R)); None stays None (no limit)."""
        if entry is None:
            return None
        rate = entry.get("rate") if isinstance(entry, dict) else None
        burst = entry.get("burst", max(1.0, rate)) if isinstance(entry, dict) and isinstance(rate, int | float) else None
        if not isinstance(rate, int | float) or not isinstance(burst, int | float) or not (rate > 0 and burst >= 1):
            raise ValueError(f"{where}: a rate limit is {{\"rate\": requests per second > 0, \"burst\": >= 1}}")
        return cls(float(rate), float(burst))


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self.clock, self.max_buckets = clock, max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # id -> (tokens, at)
        self._lock = threading.Lock()
        self.refused: Counter[str] = Counter()  # by label: key name or "anonymous"

    def take(self, bucket: str, limit: RateLimit, label: str) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(bucket, (limit.burst, now))
            tokens = min(limit.burst, tokens + (now - at) * limit.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / limit.rate
            self._buckets[bucket] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            if wait:
                self.refused[label] += 1
            return wait


def retry_after(wait: float) -> str:
    """Whole seconds, rounded up, at least 1 (HTTP's Retry-After has no fractions)."""
    return str(max(1, math.ceil(wait)))


class RateLimitCollector:
    """`recsys_rate_limited_total{key}`: requests refused with 429, by key name ("anonymous" for addresses)."""

    def __init__(self, buckets: TokenBuckets) -> None:
        self.buckets = buckets

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily("recsys_rate_limited", "Requests refused with 429, by API key name", labels=["key"])
        for label, count in sorted(self.buckets.refused.items()):
            refused.add_metric([label], count)
        yield refused
