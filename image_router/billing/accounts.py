"""A tenant's budget windows and usage as the state store holds them now, and an
operator's credit — what ``/admin/budgets``, ``/v1/usage``, ``router budgets`` and the
census behind the metrics and the status page read (:mod:`image_router.billing.census`).

Reads are one bounded call per window (``{spent, reserved}``) or ledger day; ``None``
means the store did not answer. ``reserved`` is what requests in flight hold, plus any
hold of a replica that died, until the tenant's next request gives it back.

**A credit** lowers a window's ``spent`` (never below zero) by a settlement of a
negative amount — the store's own idempotent ``settle`` (:mod:`image_router.state.spend`),
so the window is changed in one atomic step, on every replica's view at once, and a
retry after a lost reply counts once. The clamp needs the window's ``spent`` first:
credits of one tenant take the lease ``bcredit:{tenant}`` around that read and their
settlement, so two credits never both subtract from the same ``spent``, and nothing
else ever lowers it (requests only add), so what was read is the least it can be when
the settlement lands. Credits are not usage: the ledger (``/admin/usage``) is unchanged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from image_router.billing import ledger
from image_router.billing.budget import Window, standing, windows
from image_router.billing.spec import MICROS, Budget
from image_router.errors import Conflict, StoreUnavailable
from image_router.state.guard import GuardedState

__all__ = ["Credit", "WindowState", "credit", "money", "usage_rows", "windows_of"]

LEASE_S = 30.0  # one tenant's credits, one at a time (a credit takes a few bounded calls)
LEASE_WAIT_S = 2.0  # how long a credit waits for another of the same tenant
DONE_TTL_S = 86400  # a credit's settlement marker: its own retries count once
SETTLE_TRIES = 3


def money(micro: int) -> float:
    return round(micro / MICROS, 6)


@dataclass(frozen=True, slots=True)
class WindowState:
    """One budget window now, in micro-units; ``state`` as :func:`standing` names it."""

    per: str
    limit: int
    spent: int
    reserved: int
    resets_at: float
    state: str

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent - self.reserved)

    @property
    def used(self) -> float:
        """The share spent or held (1.0 for a window with no amount)."""
        return 1.0 if self.limit <= 0 else (self.spent + self.reserved) / self.limit

    def body(self) -> dict[str, Any]:
        return {
            "per": self.per,
            "limit": money(self.limit),
            "spent": money(self.spent),
            "reserved": money(self.reserved),
            "remaining": money(self.remaining),
            "used": round(self.used, 4),
            "resets_at": int(self.resets_at),
            "state": self.state,
        }


class Credit(NamedTuple):
    per: str
    amount: int  # credited, micro-units: at most what was asked and what was spent
    spent_before: int


async def windows_of(store: GuardedState, tenant: str, budget: Budget, wall: float) -> list[WindowState] | None:
    """Every window of ``tenant``'s budget that ``wall`` falls in."""
    out = []
    for win in windows(tenant, budget, wall):
        counts = await store.read_counts(win.key)
        if counts is None:
            return None
        spent, reserved = counts.get("spent", 0), counts.get("reserved", 0)
        out.append(
            WindowState(
                win.per, win.limit, spent, reserved, win.resets_at, standing(budget, win.limit, spent, reserved)
            )
        )
    return out


async def usage_rows(
    store: GuardedState, tenants: Sequence[str], start: dt.date, end: dt.date
) -> list[dict[str, Any]] | None:
    """The ledger's rows (:func:`image_router.billing.ledger.rows`) of ``tenants``, day by day."""
    rows: list[dict[str, Any]] = []
    day = start
    while day <= end:
        stamp = day.strftime("%Y%m%d")
        for tenant in tenants:
            counts = await store.read_counts(ledger.key(stamp, tenant))
            if counts is None:
                return None
            rows.extend(ledger.rows(stamp, tenant, counts))
        day += dt.timedelta(days=1)
    return rows


async def credit(
    store: GuardedState, tenant: str, budget: Budget, per: str | None, amount: int, wall: float
) -> list[Credit]:
    """Credit ``amount`` micro-units to the window ``per`` of ``tenant``'s budget (every
    window when ``None``), each lowered at most to 0. Raises :class:`Conflict` when
    another credit of the tenant holds the lease past :data:`LEASE_WAIT_S`, and
    :class:`StoreUnavailable` when the store does not answer (what was credited before
    that is named)."""
    wins = [w for w in windows(tenant, budget, wall) if per is None or w.per == per]
    owner, lease = secrets.token_hex(8), f"bcredit:{tenant}"
    deadline = time.monotonic() + LEASE_WAIT_S
    while not (took := await store.lease(lease, owner, LEASE_S)):
        if took is None:
            raise StoreUnavailable("the state store did not answer: nothing was credited")
        if time.monotonic() > deadline:
            raise Conflict(f"another credit of tenant {tenant!r} is being applied; try again")
        await asyncio.sleep(0.05)
    done: list[Credit] = []
    try:
        for k, win in enumerate(wins):
            counts = await store.read_counts(win.key)
            spent = counts.get("spent", 0) if counts is not None else 0
            give = min(amount, max(0, spent))
            if counts is None or not await _settle(store, tenant, f"{owner}-{k}", win, -give):
                said = ", ".join(f"{c.per} {money(c.amount)}" for c in done if c.amount) or "nothing"
                raise StoreUnavailable(f"the state store did not answer: credited {said} before it stopped")
            done.append(Credit(win.per, give, spent))
    finally:
        await store.release(lease, owner)
    return done


async def _settle(store: GuardedState, tenant: str, name: str, win: Window, delta: int) -> bool:
    """``spent += delta`` in ``win``, once (retried with the same marker)."""
    if delta == 0:
        return True
    holder = f"bres:{tenant}:credit-{name}"  # holds nothing: only ``spent`` moves
    keys = [f"br:{tenant}", holder, "bs:" + holder.removeprefix("bres:"), win.key]
    for _ in range(SETTLE_TRIES):
        if await store.settle(keys, [delta, DONE_TTL_S, win.ttl_s]) is not None:
            return True
    return False
