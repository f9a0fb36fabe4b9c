"""Spend budgets at the gateway: reserve before a request runs, settle after it.

The arithmetic is pure (:mod:`router.billing.budget`, :mod:`router.state.spend`); this
module holds the replica's side: it asks the shared state store for one atomic
reservation over all of the tenant's windows, and settles each request exactly once —
off the request path, retried with the same key, so a retry after a lost reply or a
replay after a crash counts once (the store keeps a ``done`` marker per request).

**Store unreachable** (its call bounded by ``state.timeout_ms``): ``fail: closed``
refuses (``503 store_unavailable``); ``fail: open`` admits against a per-replica shadow
of the tenant's budget that starts from the least ``available`` the store last answered
and is spent down locally, so while the store is down each replica can overspend by at
most that last available amount (worst case: replicas x it; a tenant never seen by this
replica before the fault is admitted once per request at tier 0, as LiteLLM's default
fails open). Settlements that could not be written are retried later
(``SETTLE_TRIES`` times, backing off) and apply once when the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router.billing import ledger
from router.billing.budget import Window, quotes, refusal, windows
from router.billing.spec import Billing
from router.billing.usage import Usage
from router.config.table import Model, Tenant
from router.errors import InsufficientQuota, StoreUnavailable
from router.state.guard import GuardedState

__all__ = ["DONE_TTL_S", "SETTLE_TRIES", "BudgetGate", "Reservation", "Spend"]

log = logging.getLogger("router.billing")

DONE_TTL_S = 7 * 86400  # a settled request's marker: replays within a week count once
SETTLE_TRIES = 12  # about 2 minutes of backing off before a settlement is given up (logged)
RESERVE_EXTRA_S = 60.0  # a reservation outlives its request's budget by this much


@dataclass(slots=True)
class Reservation:
    """One request's reservation: what to settle, and where."""

    tenant: str
    holder: str  # the request's reservation key (bres:...)
    windows: list[Window]
    tier: int  # the first tier the budget pays for (tiers before it are skipped: `budget`)
    amount: int  # micro-units held
    available: list[int]  # per window, after this reservation
    local: bool = False  # admitted while the store did not answer (fail: open)

    @property
    def index(self) -> str:
        return f"br:{self.tenant}"

    @property
    def done(self) -> str:
        return "bs:" + self.holder.removeprefix("bres:")

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-*-spend`` of the window that binds (least left)."""
        if not self.available:  # admitted while the store did not answer: nothing known
            return {}
        k = min(range(len(self.windows)), key=lambda i: self.available[i])
        win = self.windows[k]
        return {
            "x-ratelimit-limit-spend": f"{win.limit / 1e6:.6f}",
            "x-ratelimit-remaining-spend": f"{max(0, self.available[k]) / 1e6:.6f}",
            "x-ratelimit-reset-spend": str(int(win.resets_at)),
        }


@dataclass(frozen=True, slots=True)
class Spend:
    """A request's reservation and the tiers it skipped for the budget (``budget``)."""

    held: Reservation
    skipped: tuple[tuple[str, str], ...]


class BudgetGate:
    """Reserve and settle against the shared store; the replica's shadow for fail-open."""

    def __init__(self, store: Callable[[], GuardedState | None], wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.wall = wall
        self._shadow: dict[str, int] = {}  # tenant -> micro-units this replica may still spend alone
        self._tasks: set[asyncio.Task[None]] = set()
        self.settled = 0  # applied settlements (the status page, tests)

    async def reserve(
        self, tenant: Tenant, billing: Billing, chain: list[Model], images: int, steps: int | None, budget_s: float
    ) -> Reservation | None:
        """The tenant's reservation for this chain (``None``: it has no budget); raises
        :class:`InsufficientQuota` when no tier fits, :class:`StoreUnavailable` when
        the store did not answer and the budget says ``fail: closed``."""
        budget = tenant.budget
        if budget is None:
            return None
        wins = windows(tenant.name, budget, self.wall())
        asked = quotes(billing, chain, images, steps)
        if budget.on_exhausted == "reject":
            asked = asked[:1]  # only the intended tier: no budget downgrade
        holder = f"bres:{tenant.name}:{secrets.token_hex(8)}"
        reservation = Reservation(tenant.name, holder, wins, 0, 0, [])
        ttl_ms = int((budget_s + RESERVE_EXTRA_S) * 1000)
        args = [ttl_ms, len(wins), *(w.limit for w in wins), *(w.ttl_s for w in wins), *asked]
        store = self.store()
        try:
            reply = await store.reserve([reservation.index, holder, *(w.key for w in wins)], args) if store else None
        except asyncio.CancelledError:  # the client left mid-call: the store may hold it; give it back
            self.settle(reservation, 0)
            raise
        if reply is None:
            return self._unreachable(tenant, reservation, asked)
        tier, amount, available = reply[0], reply[1], reply[2:]
        self._shadow[tenant.name] = min(available) if available else 0
        if tier < 0:
            message, win = refusal(tenant.name, wins, available)
            reservation.available = available
            raise InsufficientQuota(
                message,
                retry_after_s=max(1, int(win.resets_at - self.wall())),
                headers={"x-should-retry": "false", **reservation.headers()},
                tenant=tenant.name,
            )
        reservation.tier, reservation.amount, reservation.available = tier, amount, available
        return reservation

    def _unreachable(self, tenant: Tenant, reservation: Reservation, asked: list[int]) -> Reservation:
        assert tenant.budget is not None
        if tenant.budget.fail == "closed":
            raise StoreUnavailable(f"the state store did not answer: tenant {tenant.name!r}'s budget cannot be checked")
        left = self._shadow.get(tenant.name)
        amount = asked[0] if asked else 0
        if left is not None and amount > left:
            raise InsufficientQuota(
                f"tenant {tenant.name!r}: the state store is unreachable and this replica's share is spent",
                retry_after_s=1,
                headers={"x-should-retry": "false"},
                tenant=tenant.name,
            )
        if left is not None:
            self._shadow[tenant.name] = left - amount
        reservation.amount, reservation.local = amount, True
        return reservation

    def settle(self, reservation: Reservation, actual: int) -> None:
        """Count ``actual`` micro-units spent (0: nothing ran: the hold is given back),
        off the request path, retried until the store takes it."""
        task = asyncio.get_running_loop().create_task(self._settle(reservation, actual))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, reservation: Reservation, actual: int) -> None:
        keys = [reservation.index, reservation.holder, reservation.done, *(w.key for w in reservation.windows)]
        args = [actual, DONE_TTL_S, *(w.ttl_s for w in reservation.windows)]
        delay = 0.05
        for _ in range(SETTLE_TRIES):
            store = self.store()
            done = await store.settle(keys, args) if store is not None else None
            if done is not None:
                self.settled += done
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        log.error(
            "budget settlement of %s for tenant %r not written: the store did not answer", actual, reservation.tenant
        )

    def record(self, tenant: str, route: str, model: str, usage: Usage) -> None:
        """The answer's line in the usage ledger (:mod:`router.billing.ledger`), written
        off the request path, once (never retried: it could count twice)."""
        store = self.store()
        if store is None:
            return
        day = ledger.key(ledger.day_of(self.wall()), tenant or ledger.ANONYMOUS)
        call = store.add_counts(day, ledger.fields(route, model, usage), ledger.KEEP_S)
        task = asyncio.get_running_loop().create_task(_quietly(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the settlements in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _quietly(call: Awaitable[bool]) -> None:
    await call  # the guard answers False on a fault and logs it: nothing to raise here
