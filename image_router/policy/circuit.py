"""A circuit breaker: stop sending to what keeps failing, then probe it.

Closed → open after ``consecutive_failures`` failures in a row, or when at least
``min_requests`` outcomes in the last ``window_s`` seconds fail at ``failure_ratio`` or
more. Open → half-open after ``cooldown_s``: exactly one probe is let through; its
success closes the circuit, its failure opens it for another cooldown. Pure logic: the
caller passes the time, so it is tested without sleeping.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from image_router.config.table import CircuitPolicy

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "CircuitPolicy"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    policy: CircuitPolicy = field(default_factory=CircuitPolicy)
    state: str = CLOSED
    opened_at: float = 0.0
    failures_in_a_row: int = 0
    probing: bool = False
    opened_count: int = 0
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    failed: int = field(default=0, init=False)  # failures among ``outcomes``, kept as they come and go

    def allow(self, now: float) -> bool:
        """May a request go now? In half-open, only the single probe may."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.policy.cooldown_s:
            self.state, self.probing = HALF_OPEN, False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def would_allow(self, now: float) -> bool:
        """Like :meth:`allow` but without taking the probe (for skipping decisions)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.policy.cooldown_s
        return not self.probing

    def record(self, now: float, ok: bool) -> None:
        if self.state == HALF_OPEN:
            self.probing = False
            if ok:
                self._close()
            else:
                self._open(now)
            return
        self.outcomes.append((now, ok))
        self.failed += not ok
        cutoff = now - self.policy.window_s
        while self.outcomes and self.outcomes[0][0] < cutoff:
            self.failed -= not self.outcomes.popleft()[1]
        self.failures_in_a_row = 0 if ok else self.failures_in_a_row + 1
        if self.state == CLOSED and not ok and self._tripped():
            self._open(now)

    def _tripped(self) -> bool:
        if self.failures_in_a_row >= self.policy.consecutive_failures:
            return True
        n = len(self.outcomes)  # the window holds every call of the last window_s: at a
        # high rate, thousands; a failure that summed them all cost ~0.1 ms per 10,000
        return n >= self.policy.min_requests and self.failed / n >= self.policy.failure_ratio

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.probing = OPEN, now, False
        self.opened_count += 1

    def _close(self) -> None:
        self.state, self.failures_in_a_row, self.failed = CLOSED, 0, 0
        self.outcomes.clear()
