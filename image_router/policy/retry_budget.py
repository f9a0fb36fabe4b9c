"""A retry budget: retries may add at most ``ratio`` of the requests over a window.

Retries help with a replica that failed; under overload they multiply the load that
caused the failures. Capping them at a fraction of recent traffic (plus a small floor
so a quiet gateway can still retry) keeps one from turning into the other.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["RetryBudget"]


@dataclass
class RetryBudget:
    ratio: float = 0.2
    window_s: float = 10.0
    min_retries: int = 3
    requests: deque[float] = field(default_factory=deque)
    retries: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        for times in (self.requests, self.retries):
            while times and times[0] < cutoff:
                times.popleft()

    def record_request(self, now: float) -> None:
        """Count a request. The window is trimmed here too, not only when a retry asks:
        on a healthy backend nothing asks, and the deque grew with every request
        (~32 bytes each, for good), until the first retry trimmed it all at once."""
        self.requests.append(now)
        cutoff = now - self.window_s
        while self.requests[0] < cutoff:  # never empty: ``now`` was just added
            self.requests.popleft()

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget if there is one left."""
        self._expire(now)
        allowed = max(self.min_retries, int(self.ratio * len(self.requests)))
        if len(self.retries) >= allowed:
            return False
        self.retries.append(now)
        return True
