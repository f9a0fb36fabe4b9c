"""What the metrics and the status page show of the budgets and of today's spend, read
from the state store in the background at most every :data:`FRESH_S` — never one store
round trip per scrape or poll, however many scrapers there are. A read asked for by an
operator (``GET /admin/budgets``) is kept too (:meth:`Census.note`), so it is never
older than what the operator was just shown.

Today's spend comes from the usage ledger (every replica's answers); the windows from
the budgets' keys. Until the first read lands there is nothing to show (a fresh
replica's first scrape has no budget gauges).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from image_router.billing import ledger
from image_router.billing.accounts import WindowState, usage_rows, windows_of
from image_router.config.table import RoutingTable
from image_router.state.guard import GuardedState

__all__ = ["FRESH_S", "Census"]

FRESH_S = 5.0


class Census:
    def __init__(
        self,
        store: Callable[[], GuardedState | None],
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        fresh_s: float = FRESH_S,
    ) -> None:
        self.store = store
        self.wall = wall
        self.clock = clock
        self.fresh_s = fresh_s
        self.task: asyncio.Task[None] | None = None
        self._asked = float("-inf")  # clock of the last read started
        self._read_at: float | None = None  # wall time of the last read that landed
        self._windows: dict[str, list[WindowState]] = {}
        self._today: list[dict[str, Any]] = []

    def note(self, tenant: str, wins: list[WindowState]) -> None:
        self._windows[tenant] = wins

    def snapshot(self, table: RoutingTable) -> dict[str, Any]:
        """The last read (the budgets of the table's tenants), starting a new one in the
        background when it is older than :attr:`fresh_s`."""
        if self.clock() - self._asked >= self.fresh_s and (self.task is None or self.task.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test's collector): the last read only
                loop = None
            if loop is not None:
                self._asked = self.clock()
                self.task = loop.create_task(self.refresh(table))
        budgets = [
            {"tenant": t.name, "windows": [w.body() for w in self._windows[t.name]]}
            for t in table.tenants
            if t.budget is not None and t.name in self._windows
        ]
        return {"read_at": self._read_at, "budgets": budgets, "today": self._today}

    async def refresh(self, table: RoutingTable) -> None:
        """One read of every budget window and of today's ledger; a window or a day the
        store did not answer for keeps its last value."""
        store = self.store()
        if store is None:
            return
        wall = self.wall()
        for tenant in table.tenants:
            if tenant.budget is not None:
                wins = await windows_of(store, tenant.name, tenant.budget, wall)
                if wins is not None:
                    self._windows[tenant.name] = wins
        today = dt.datetime.fromtimestamp(wall, dt.UTC).date()
        rows = await usage_rows(store, [*(t.name for t in table.tenants), ledger.ANONYMOUS], today, today)
        if rows is not None:
            self._today = rows
        self._read_at = wall
