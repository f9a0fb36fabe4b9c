"""Admission: at most ``limit`` requests in flight per model, a bounded priority queue.

A request that finds the model full may wait — in priority order (1 first), then by
fair share between tenants, then arrival order — but only while fewer than
``max_queue`` are already waiting; the caller bounds the wait by its deadline.

Fair share is weighted fair queuing with equal weights (start-time tags): each waiter's
tag is one more than the later of the gate's virtual time (the tag last admitted) and
its tenant's previous tag. A tenant that sends ten times as much only lines up behind
itself: a light tenant's next request is tagged near the virtual time and goes ahead
of the heavy tenant's backlog. Requests without a tenant share one.

The line holds live waiters only, sorted: a waiter that gives up (its deadline, a
cancel) leaves it the moment its task is cancelled (:class:`_Waiter`), not when a
release would have popped it. So every look at the queue — how many wait, how many a
new request would wait behind, who is last — is a length or a binary search, whatever
the queue holds; each request looks at least once (:meth:`AdmissionGate.try_acquire`),
and during an overload the queue is as long as ``max_queue`` allows.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from typing import Any

__all__ = ["AdmissionGate"]

_Key = tuple[int, float, int]  # priority, fair-share tag, arrival: the order of the line


class _Waiter(asyncio.Future[bool]):
    """A waiter's future that leaves the line as it is cancelled. ``Task.cancel()``
    cancels the future its task awaits at once, but the task's own ``except`` runs only
    on a later turn of the loop; counted until then, a gone waiter could make a new
    request queue behind nobody while a slot is free."""

    def __init__(self, gate: AdmissionGate, key: _Key) -> None:
        super().__init__()
        self._gate, self._key = gate, key

    def cancel(self, msg: Any | None = None) -> bool:
        if not self.done():
            self._gate._leave(self._key)
        return super().cancel(msg)


class AdmissionGate:
    def __init__(self, limit: int | None, max_queue: int = 0) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.inflight = 0
        self._line: list[_Key] = []  # live waiters, first in line first
        self._waiters: dict[_Key, _Waiter] = {}
        self._order = itertools.count()
        self._virtual = 0.0  # the tag of the waiter admitted last
        self._last_tag: dict[str, float] = {}  # per tenant (bounded by the configured tenants)

    @property
    def queued(self) -> int:
        return len(self._line)

    def ahead_of(self, priority: int, tenant: str) -> int:
        """How many waiting requests a new one of ``tenant`` at ``priority`` would wait
        behind: only those it would not overtake (a heavy tenant's backlog is not ahead
        of a light tenant's next request)."""
        return bisect.bisect_left(self._line, (priority, self._tag(tenant)))

    def try_acquire(self) -> bool:
        if self.limit is None or (self.inflight < self.limit and not self._line):
            self.inflight += 1
            return True
        return False

    def _tag(self, tenant: str) -> float:
        return max(self._virtual, self._last_tag.get(tenant, 0.0)) + 1.0

    def _displaced_by(self, priority: int, tag: float) -> _Key | None:
        """The last waiter in line, when a new one at ``priority`` and ``tag`` would go
        ahead of it (else ``None``)."""
        if not self._line:
            return None
        last = self._line[-1]
        return last if (priority, tag) < last[:2] else None

    def can_queue(self, priority: int | None = None, tenant: str | None = None) -> bool:
        """Room in the queue — or, when it is full, a place ahead of the last in line,
        who is then displaced (so a heavy tenant's backlog cannot fill the queue against
        a light tenant's request)."""
        if len(self._line) < self.max_queue:
            return True
        if priority is None or tenant is None:
            return False
        return self._displaced_by(priority, self._tag(tenant)) is not None

    async def acquire(self, priority: int, tenant: str = "") -> bool:
        """Wait for a slot (the caller cancels on its deadline): ``True`` when admitted,
        ``False`` when displaced from a full queue by a request that goes ahead of it."""
        tag = self._tag(tenant)
        if len(self._line) >= self.max_queue:
            displaced = self._displaced_by(priority, tag)
            if displaced is not None:
                self._line.pop()
                self._waiters.pop(displaced).set_result(False)
        self._last_tag[tenant] = tag
        key = (priority, tag, next(self._order))
        future = self._waiters[key] = _Waiter(self, key)
        bisect.insort(self._line, key)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.release()  # granted just as we gave up: pass it on
            raise

    def _leave(self, key: _Key) -> None:
        """A waiter gave up: out of the line (found by binary search; keys are unique)."""
        del self._line[bisect.bisect_left(self._line, key)]
        del self._waiters[key]

    def release(self) -> None:
        if self._line:
            key = self._line.pop(0)  # a memmove of the line's pointers, not a scan
            self._virtual = max(self._virtual, key[1])
            self._waiters.pop(key).set_result(True)  # the slot passes straight to the waiter
            return
        self.inflight -= 1
