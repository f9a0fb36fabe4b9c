"""When a replica may start a job, and which one (pure: the clock is passed in).

Jobs run below interactive traffic, but never starve:

- **idle**: the tier has nothing ahead of a request in its forecast and a free
  admission slot (``Dispatcher.idle``, the background filler's rule): the job runs at
  the lowest priority (3), so no interactive request waits behind its admission;
- **share**: the tier is busy, but jobs are owed their ``min_share`` of its time: after
  a job of ``d`` seconds this replica's next share-mode job on the tier waits
  ``d * (1 / min_share - 1)`` — so under saturating interactive load jobs still take
  about ``min_share`` of the tier; they run at priority 1 (their slot is owed);
- **urgent**: a queued job whose deadline is near (``now + 1.5 * expected + margin``)
  goes first, whatever the fair order, at priority 1 (aging).

Among the rest the queue's fair order (weighted fair tags, :mod:`router.jobs.store`)
decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from router.jobs.model import Job

__all__ = ["Pacer", "pick"]

PRIORITY = {"idle": 3, "share": 1, "urgent": 1}


def pick(jobs: Sequence[Job], now: float, expected_s: float, margin_s: float) -> tuple[Job, str] | None:
    """The job to start and whether it is ``urgent`` (else ``fair``), or ``None``."""
    live = [j for j in jobs if j.deadline_at > now]
    if not live:
        return None
    urgent = [j for j in live if now + expected_s * 1.5 + margin_s >= j.deadline_at]
    if urgent:
        return min(urgent, key=lambda j: (j.deadline_at, j.id)), "urgent"
    return min(live, key=lambda j: (j.tag, j.id)), "fair"


@dataclass
class Pacer:
    """A tier's share-mode pacing on this replica."""

    min_share: float
    rest_until: float = 0.0
    running: set[str] = field(default_factory=set)

    def mode(self, idle: bool, urgent: bool, now: float) -> str | None:
        """``idle``, ``share``, ``urgent``, or ``None`` (not now)."""
        if urgent:
            return "urgent"
        if idle:
            return "idle"
        if self.min_share > 0 and now >= self.rest_until:
            return "share"
        return None

    def ran(self, mode: str, started: float, ended: float) -> None:
        """After a share-mode job, the tier is left to interactive traffic for a while."""
        if mode == "share" and 0 < self.min_share < 1:
            self.rest_until = ended + (ended - started) * (1 / self.min_share - 1)
