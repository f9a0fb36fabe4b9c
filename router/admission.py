"""Admission: at most ``limit`` requests in flight per model, a bounded priority queue.

A request that finds the model full may wait — in priority order (1 first), then
arrival order — but only while fewer than ``max_queue`` are already waiting; the
caller bounds the wait by its deadline. Nothing here grows without bound.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["AdmissionGate"]


class AdmissionGate:
    def __init__(self, limit: int | None, max_queue: int = 0) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.inflight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())

    def try_acquire(self) -> bool:
        if self.limit is None or (self.inflight < self.limit and not self.queued):
            self.inflight += 1
            return True
        return False

    def can_queue(self) -> bool:
        return self.queued < self.max_queue

    async def acquire(self, priority: int) -> None:
        """Wait for a slot (the caller cancels on its deadline)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we gave up: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the slot passes straight to the waiter
                return
        self.inflight -= 1
