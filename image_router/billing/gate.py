"""Spend budgets at the gateway: reserve before a request runs, settle after it.

The arithmetic is pure (:mod:`image_router.billing.budget`, :mod:`image_router.state.spend`); this
module holds the replica's side: it asks the shared state store for one atomic
reservation over all of the tenant's windows, and settles each request exactly once —
off the request path, retried with the same key, so a retry after a lost reply or a
replay after a crash counts once (the store keeps a ``done`` marker per request).
What a reply allows — warn, brownout, a stored image for an exhausted tenant — is decided
by :func:`image_router.decide.budget_rules`; :meth:`BudgetGate.hold_hit` then reserves such an
image's hit price, and :meth:`Spend.charge` keeps its answer within what was reserved.

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
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from image_router.billing import ledger
from image_router.billing.budget import Window, hit_quote, quotes, refusal, used_share, windows
from image_router.billing.census import Census
from image_router.billing.price import Cost
from image_router.billing.spec import Billing
from image_router.billing.tally import Tally
from image_router.billing.usage import Usage
from image_router.config.table import Model, RoutingTable, Tenant
from image_router.errors import InsufficientQuota, StoreUnavailable
from image_router.state.guard import GuardedState

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
    used: float = 0.0  # the fullest window's share spent or held before this request (warn_at, downgrade_at)

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
    """A request's reservation, the tiers it skipped for the budget (``budget``), the
    budget's state (``X-Router-Budget``: ``ok``, ``warn``, ``brownout`` or ``exhausted``)
    and the most its answer may be charged (``None``: no cap; set only when the budget
    serves it what is stored, and nothing it would make)."""

    held: Reservation
    skipped: tuple[tuple[str, str], ...]
    state: str = "ok"
    cap: int | None = None

    @property
    def stored_only(self) -> bool:
        """Served only what is stored (its budget pays for no tier it could make)."""
        return self.cap is not None

    def headers(self) -> dict[str, str]:
        """The binding window's ``x-ratelimit-*-spend`` and ``X-Router-Budget`` (nothing
        when the store did not answer: nothing is known)."""
        spend = self.held.headers()
        return {**spend, "x-router-budget": self.state} if spend else spend

    def charge(self, usage: Usage) -> Usage:
        """``usage`` as billed: free when it costs more than the cap (a stored image an
        exhausted tenant was promised, made after all because it left the store meanwhile)."""
        if self.cap is None or usage.cost.total <= self.cap:
            return usage
        return dataclasses.replace(usage, cost=Cost())


class BudgetGate:
    """Reserve and settle against the shared store; the replica's shadow for fail-open;
    what this replica spent and decided (:class:`Tally`) and the store's budgets and
    today's spend as last read (:class:`Census`), for the metrics and the status page."""

    def __init__(self, store: Callable[[], GuardedState | None], wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.wall = wall
        self._shadow: dict[str, int] = {}  # tenant -> micro-units this replica may still spend alone
        self._tasks: set[asyncio.Task[None]] = set()
        self.settled = 0  # applied settlements (the status page, tests)
        self.tally = Tally()
        self.census = Census(store, wall)

    async def reserve(
        self, tenant: Tenant, billing: Billing, chain: list[Model], images: int, steps: int | None, budget_s: float
    ) -> Reservation | None:
        """:meth:`hold`, raising :class:`InsufficientQuota` when no tier fits."""
        held = await self.hold(tenant, billing, chain, images, steps, budget_s)
        if held is not None and held.tier < 0:
            raise self.refusal(held)
        return held

    async def hold(
        self, tenant: Tenant, billing: Billing, chain: list[Model], images: int, steps: int | None, budget_s: float
    ) -> Reservation | None:
        """The tenant's reservation for this chain (``None``: it has no budget; ``tier``
        -1: no tier fits, nothing held — :func:`image_router.decide.budget_rules` decides what
        then); raises :class:`StoreUnavailable` when the store did not answer and the
        budget says ``fail: closed``. With ``on_exhausted: reject`` only the intended
        tier is quoted, unless a brownout (``downgrade_at``) may serve a later one."""
        budget = tenant.budget
        if budget is None:
            return None
        asked = quotes(billing, chain, images, steps)
        if budget.on_exhausted == "reject" and budget.downgrade_at is None:
            asked = asked[:1]  # only the intended tier: no budget downgrade
        return await self._hold(tenant, windows(tenant.name, budget, self.wall()), asked, budget_s)

    async def hold_hit(
        self, tenant: Tenant, held: Reservation, billing: Billing, images: int, budget_s: float
    ) -> tuple[Reservation, int]:
        """A stored image for a tenant whose budget serves no tier (docs/billing.md): the
        hit price is held instead of ``held``. Returns the reservation to settle and the
        most the answer may be charged — 0 when the hit price does not fit either: the
        image is served free, never past the limit.

        What ``held`` holds already (a brownout that allows no tier of the chain still
        reserved one) covers the hit when it is enough: it is kept, and settling the hit
        gives the rest back — no second store call, and the answer's remaining spend is
        what is left once only the hit is held. Else it is given back *before* the hit is
        held (one call; retried in the background if the store does not take it), so the
        hit's reservation and its ``x-ratelimit-remaining-spend`` do not count it too."""
        amount = hit_quote(billing, images)
        if held.amount >= amount:
            back = held.amount - amount
            return dataclasses.replace(held, available=[a + back for a in held.available]), amount
        if held.amount > 0 and not await self._give_back_now(held):
            self.settle(held, 0)
        hit = await self._hold(tenant, held.windows, [amount], budget_s)
        return hit, hit.amount  # 0 when it does not fit: nothing held

    async def _hold(self, tenant: Tenant, wins: list[Window], asked: list[int], budget_s: float) -> Reservation:
        holder = f"bres:{tenant.name}:{secrets.token_hex(8)}"
        reservation = Reservation(tenant.name, holder, wins, 0, 0, [])
        ttl_ms = int((budget_s + RESERVE_EXTRA_S) * 1000)
        args = [ttl_ms, len(wins), *(w.limit for w in wins), *(w.ttl_s for w in wins), *asked]
        store = self.store()
        try:
            reply = await store.reserve([reservation.index, holder, *(w.key for w in wins)], args) if store else None
        except asyncio.CancelledError:  # the client left mid-call: the store may hold it; give it back
            self._give_back(reservation)
            raise
        if reply is None:
            return self._unreachable(tenant, reservation, asked)
        tier, amount, available = reply[0], reply[1], reply[2:]
        self._shadow[tenant.name] = min(available) if available else 0
        reservation.tier, reservation.amount, reservation.available = tier, amount, available
        reservation.used = used_share(wins, available, amount)
        return reservation

    def refusal(self, held: Reservation, brownout: float | None = None) -> InsufficientQuota:
        """The ``429 insufficient_quota`` for a request its budget cannot serve; whatever
        ``held`` holds is given back first. ``brownout``: the ``downgrade_at`` share that
        refused it while the windows could still pay (:func:`refused_state`): the answer
        says ``brownout``, and the decision counted is ``brownout_refused``."""
        self.tally.decided(held.tenant, "exhausted" if brownout is None else "brownout_refused")
        if held.amount > 0:
            self.settle(held, 0)
            held = dataclasses.replace(held, amount=0, available=[a + held.amount for a in held.available])
        headers = {"x-should-retry": "false"}
        if held.available:
            message, win = refusal(held.tenant, held.windows, held.available, brownout)
            retry_s = max(1, int(win.resets_at - self.wall()))
            headers.update(held.headers())
            headers["x-router-budget"] = "exhausted" if brownout is None else "brownout"
        else:  # the store did not answer, and this replica's shadow of the budget is spent
            message = f"tenant {held.tenant!r}: the state store is unreachable and this replica's share is spent"
            retry_s = 1
        return InsufficientQuota(message, retry_after_s=retry_s, headers=headers, tenant=held.tenant)

    def _unreachable(self, tenant: Tenant, reservation: Reservation, asked: list[int]) -> Reservation:
        assert tenant.budget is not None
        if tenant.budget.fail == "closed":
            self.tally.decided(tenant.name, "fail_closed")
            raise StoreUnavailable(f"the state store did not answer: tenant {tenant.name!r}'s budget cannot be checked")
        left = self._shadow.get(tenant.name)
        amount = asked[0] if asked else 0
        reservation.local = True
        if left is not None and amount > left:
            reservation.tier = -1  # this replica's share is spent: nothing held
            return reservation
        if left is not None:
            self._shadow[tenant.name] = left - amount
        reservation.amount = amount
        return reservation

    def decided(self, held: Reservation, state: str) -> None:
        """Count what a request's budget let it be served from (``state``: its
        ``X-Router-Budget``); a refusal counts itself (:meth:`refusal`)."""
        self.tally.decided(held.tenant, "fail_open" if held.local else state)

    def _give_back(self, reservation: Reservation) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(reservation, 0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _give_back_now(self, reservation: Reservation) -> bool:
        """One attempt to give ``reservation`` back at once (``False``: the store did not
        answer; the caller retries it in the background)."""
        store = self.store()
        keys = [reservation.index, reservation.holder, reservation.done, *(w.key for w in reservation.windows)]
        done = await store.settle(keys, [0, DONE_TTL_S, *(w.ttl_s for w in reservation.windows)]) if store else None
        if done is None:
            return False
        self.settled += done
        return True

    def settle(self, reservation: Reservation, actual: int) -> None:
        """Count ``actual`` micro-units spent (0: nothing ran: the hold is given back),
        off the request path, retried until the store takes it. Nothing held and
        nothing spent: nothing to write."""
        if actual == 0 and reservation.amount == 0:
            return
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
        """The answer's line in the usage ledger (:mod:`image_router.billing.ledger`), written
        off the request path, once (never retried: it could count twice); counted in
        this replica's :attr:`tally` either way."""
        self.tally.add(tenant or ledger.ANONYMOUS, route, model, usage)
        store = self.store()
        if store is None:
            return
        day = ledger.key(ledger.day_of(self.wall()), tenant or ledger.ANONYMOUS)
        call = store.add_counts(day, ledger.fields(route, model, usage), ledger.KEEP_S)
        task = asyncio.get_running_loop().create_task(_quietly(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def describe(self, table: RoutingTable) -> dict[str, Any] | None:
        """This replica's spend and decisions, and the budgets and today's spend as last
        read (no I/O here: a stale read is refreshed in the background). ``None``
        without a ``billing`` block."""
        if table.billing is None:
            return None
        return {"currency": table.billing.currency, **self.tally.describe(), **self.census.snapshot(table)}

    async def drain(self) -> None:
        """Wait for the settlements in flight and a census read (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.census.task is not None:
            await asyncio.gather(self.census.task, return_exceptions=True)


async def _quietly(call: Awaitable[bool]) -> None:
    await call  # the guard answers False on a fault and logs it: nothing to raise here
