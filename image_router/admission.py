"""Admission: at most ``limit`` requests in flight per model, a bounded priority queue.

A request that finds the model full may wait — in priority order (1 first), then by
fair share between tenants, then arrival order — but only while fewer than
``max_queue`` are already waiting; the caller bounds the wait by its deadline. Nothing
here grows without bound (waiters that gave up are pruned: :meth:`AdmissionGate._prune`).

Fair share is weighted fair queuing with equal weights (start-time tags): each waiter's
tag is one more than the later of the gate's virtual time (the tag last admitted) and
its tenant's previous tag. A tenant that sends ten times as much only lines up behind
itself: a light tenant's next request is tagged near the virtual time and goes ahead
of the heavy tenant's backlog. Requests without a tenant share one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["AdmissionGate"]

_SLACK = 16  # waiters beyond twice max_queue before the ones that left are pruned


class AdmissionGate:
    def __init__(self, limit: int | None, max_queue: int = 0) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.inflight = 0
        self._waiters: list[tuple[int, float, int, asyncio.Future[bool]]] = []
        self._order = itertools.count()
        self._virtual = 0.0  # the tag of the waiter admitted last
        self._last_tag: dict[str, float] = {}  # per tenant (bounded by the configured tenants)

    @property
    def queued(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())

    def ahead_of(self, priority: int, tenant: str) -> int:
        """How many waiting requests a new one of ``tenant`` at ``priority`` would wait
        behind: only those it would not overtake (a heavy tenant's backlog is not ahead
        of a light tenant's next request)."""
        tag = self._tag(tenant)
        return sum(1 for p, t, _, f in self._waiters if not f.done() and (p, t) < (priority, tag))

    def try_acquire(self) -> bool:
        if self.limit is None or (self.inflight < self.limit and not self.queued):
            self.inflight += 1
            return True
        return False

    def _tag(self, tenant: str) -> float:
        return max(self._virtual, self._last_tag.get(tenant, 0.0)) + 1.0

    def _displaced_by(self, priority: int, tag: float) -> asyncio.Future[bool] | None:
        """The last waiter in line, when a new one at ``priority`` and ``tag`` would go
        ahead of it (else ``None``)."""
        waiting = [w for w in self._waiters if not w[3].done()]
        if not waiting:
            return None
        last = max(waiting, key=lambda w: (w[0], w[1], w[2]))
        return last[3] if (priority, tag) < (last[0], last[1]) else None

    def can_queue(self, priority: int | None = None, tenant: str | None = None) -> bool:
        """Room in the queue — or, when it is full, a place ahead of the last in line,
        who is then displaced (so a heavy tenant's backlog cannot fill the queue against
        a light tenant's request)."""
        if self.queued < self.max_queue:
            return True
        if priority is None or tenant is None:
            return False
        return self._displaced_by(priority, self._tag(tenant)) is not None

    async def acquire(self, priority: int, tenant: str = "") -> bool:
        """Wait for a slot (the caller cancels on its deadline): ``True`` when admitted,
        ``False`` when displaced from a full queue by a request that goes ahead of it."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        tag = self._tag(tenant)
        if self.queued >= self.max_queue:
            displaced = self._displaced_by(priority, tag)
            if displaced is not None:
                displaced.set_result(False)
        self._last_tag[tenant] = tag
        heapq.heappush(self._waiters, (priority, tag, next(self._order), future))
        if len(self._waiters) > 2 * self.max_queue + _SLACK:
            self._prune()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.release()  # granted just as we gave up: pass it on
            raise

    def _prune(self) -> None:
        """Drop the waiters that gave up (timed out, cancelled, displaced). They leave the
        heap only when a release pops them, and while the slots stay busy — a hung
        backend — requests kept arriving and giving up: the heap grew with them, and
        every request's look at the queue (:attr:`queued`) scanned it all. Pruned once
        half of it is gone, the heap stays within twice ``max_queue``: O(1) amortised."""
        self._waiters = [w for w in self._waiters if not w[3].done()]
        heapq.heapify(self._waiters)

    def release(self) -> None:
        while self._waiters:
            _, tag, _, future = heapq.heappop(self._waiters)
            if not future.done():
                self._virtual = max(self._virtual, tag)
                future.set_result(True)  # the slot passes straight to the waiter
                return
        self.inflight -= 1
