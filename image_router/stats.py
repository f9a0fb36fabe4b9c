"""Recent latency per model, for people: a time-windowed streaming p50/p95/p99.

What the status page, the canary verdict, ``/admin/status.json`` and ``hedge: {after:
p95}`` read: answered attempts only, in a bounded ring (at most ``size`` samples, none
older than ``window_s``), ``latency_hint_ms`` until there are samples; plus the outcome
of every attempt for the error rate. Budget decisions do not read it — a quantile of
the last minute is not what is true now; they read the per-replica queue forecasts of
:mod:`image_router.policy.forecast`. The clock is injected.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LatencyStats", "LatencyWindow"]


@dataclass
class LatencyWindow:
    """Samples in arrival order (for expiry) and in sorted order (for O(1) quantiles).

    Adding or expiring a sample is a binary search plus a short memmove; reading a
    quantile is an index. This runs on every request, so it must stay cheap.
    """

    size: int = 256
    window_s: float = 60.0
    arrivals: deque[tuple[float, float]] = field(default_factory=deque)
    ordered: list[float] = field(default_factory=list)

    def add(self, now: float, seconds: float) -> None:
        self.arrivals.append((now, seconds))
        bisect.insort(self.ordered, seconds)
        if len(self.arrivals) > self.size:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, value = self.arrivals.popleft()
        del self.ordered[bisect.bisect_left(self.ordered, value)]

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        while self.arrivals and self.arrivals[0][0] < cutoff:
            self._drop_oldest()

    def quantile(self, now: float, q: float) -> float | None:
        self._expire(now)
        if not self.ordered:
            return None
        return self.ordered[min(len(self.ordered) - 1, int(q * len(self.ordered)))]

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self.ordered)


class LatencyStats:
    """Estimates for every model, seeded by hints."""

    def __init__(self, clock: Callable[[], float], window_s: float = 60.0, size: int = 256) -> None:
        self._clock = clock
        self._window_s = window_s
        self._size = size
        self._windows: dict[str, LatencyWindow] = {}
        self._outcomes: dict[str, deque[tuple[float, bool]]] = {}

    def _window(self, model: str) -> LatencyWindow:
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = LatencyWindow(self._size, self._window_s)
        return window

    def record(self, model: str, seconds: float) -> None:
        self._window(model).add(self._clock(), seconds)

    def quantile(self, model: str, q: float, hint_s: float) -> float:
        value = self._window(model).quantile(self._clock(), q)
        return hint_s if value is None else value

    def p95(self, model: str, hint_s: float) -> float:
        return self.quantile(model, 0.95, hint_s)

    def record_outcome(self, model: str, ok: bool) -> None:
        """Count an attempt's outcome, for the error rate over the same window."""
        outcomes = self._outcomes.setdefault(model, deque())
        now = self._clock()
        outcomes.append((now, ok))
        while outcomes and (outcomes[0][0] < now - self._window_s or len(outcomes) > 4 * self._size):
            outcomes.popleft()

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Recent p50/p95/p99, sample count and error rate per model (admin API, status page)."""
        now = self._clock()
        out = {}
        for model in sorted(set(self._windows) | set(self._outcomes)):
            window = self._window(model)
            outcomes = [ok for t, ok in self._outcomes.get(model, ()) if t >= now - self._window_s]
            n = window.count(now)
            if n or outcomes:
                out[model] = {
                    "count": float(n),
                    "p50_ms": 1000 * (window.quantile(now, 0.5) or 0.0),
                    "p95_ms": 1000 * (window.quantile(now, 0.95) or 0.0),
                    "p99_ms": 1000 * (window.quantile(now, 0.99) or 0.0),
                    "attempts": float(len(outcomes)),
                    "error_rate": (outcomes.count(False) / len(outcomes)) if outcomes else 0.0,
                }
        return out
