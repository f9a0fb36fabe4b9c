"""Tenants at the gateway: who is calling, and whether their limits let a request in.

The arithmetic is pure (:mod:`image_router.policy.tenants`); this module holds the replica's
counters and asks the shared state store, with one rule that keeps limits exact under
concurrency: **a request's slot is reserved before any await**. The concurrency slot is
taken synchronously on arrival and given back if the shared store then refuses, so no
number of simultaneous requests can all pass a check that was made before any of them
was counted (with the store's round trip between check and count, 12 requests once
passed a limit of 2).

A slot is held for as long as work runs on the tenant's behalf — including a cached
route's generation that goes on after its client left (:meth:`Admission.hold`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from image_router.config.table import RoutingTable, Tenant
from image_router.errors import RateLimited, Unauthorized
from image_router.policy.tenants import Decision, TenantState, bearer_key, find_tenant, limit_args, shared_decision
from image_router.telemetry import Metrics

__all__ = ["Admission", "LimitStore", "TenantGate"]

_LIMIT_NAMES = {"rate": "request rate", "images": "daily images", "concurrency": "concurrency"}


class LimitStore(Protocol):
    """The shared state store, as the tenants' limits use it: one atomic step that
    counts a request's rate and daily images for every replica at once (``None``: it
    did not answer within its bound)."""

    async def limit(self, keys: list[str], args: list[int]) -> list[int] | None: ...


class Admission:
    """A tenant's admitted request: its slot, given back once the request *and* every
    task held for it have ended."""

    __slots__ = ("_open", "_state", "headers")

    def __init__(self, state: TenantState, headers: dict[str, str]) -> None:
        self._state = state
        self._open = 1
        self.headers = headers

    def hold(self, task: asyncio.Future[Any]) -> None:
        """Keep the slot until ``task`` ends too (work that outlives its client)."""
        self._open += 1
        task.add_done_callback(lambda _: self._close())

    def release(self) -> None:
        """The request itself is done (answered, failed or abandoned)."""
        self._close()

    def _close(self) -> None:
        self._open -= 1
        if self._open == 0:
            self._state.done()


class TenantGate:
    """Authentication, admission and per-tenant counts on this replica."""

    def __init__(
        self,
        shared: Callable[[], LimitStore | None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.shared = shared
        self.clock = clock
        self.wall = wall
        self.metrics = metrics
        self._state: dict[str, TenantState] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def authenticate(self, table: RoutingTable, authorization: str | None) -> Tenant | None:
        """The tenant an ``Authorization: Bearer <key>`` names. In ``keys`` mode a missing,
        malformed or unknown key is a 401; in ``open`` mode a request without a known key
        is anonymous (``None``)."""
        key = bearer_key(authorization)
        tenant = find_tenant(table.tenant_keys, key) if key is not None else None
        if tenant is None and table.tenant_mode == "keys":
            self.count("unknown", "unauthorized")
            if not authorization:
                raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
            raise Unauthorized("the API key is not valid")
        return tenant

    def count(self, tenant: str, outcome: str) -> None:
        """Per tenant and outcome: labels bounded by the configured tenants (+ unknown)."""
        key = (tenant, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self.metrics is not None:
            self.metrics.tenant_requests.labels(tenant, outcome).inc()

    async def admit(self, tenant: Tenant, images: int) -> Admission:
        """Admit one request for ``images`` images, or raise :class:`RateLimited`. The
        concurrency slot is taken before the shared store is asked (see the module)."""
        state = self._state.setdefault(tenant.name, TenantState())
        store = self.shared() if tenant.requests_per_s or tenant.images_per_day else None
        if store is None:
            decision = state.admit(tenant, images, self.clock(), self.wall())  # takes the slot when allowed
        elif state.busy(tenant):
            decision = Decision(False, "concurrency", 1.0)
        else:
            state.enter()  # reserved now: the await below cannot let others past this check
            try:
                decision = await self._shared(tenant, images, state, store)
            except BaseException:  # cancelled (the client left) or failed: the slot is given back
                state.done()
                raise
            if not decision.allowed:
                state.done()
        if not decision.allowed:
            self.count(tenant.name, "rate_limited")
            raise RateLimited(
                f"tenant {tenant.name!r} is over its {_LIMIT_NAMES[decision.reason]} limit",
                retry_after_s=max(1, math.ceil(decision.retry_after_s)),
                headers=decision.headers,
            )
        return Admission(state, decision.headers)

    async def _shared(self, tenant: Tenant, images: int, state: TenantState, store: LimitStore) -> Decision:
        """Rate and daily images counted for every replica at once, in one round trip;
        when the store does not answer within its bound, this replica counts alone (its
        slot is already held: it is not counted twice)."""
        wall = self.wall()
        day = int(wall // 86400)
        keys = [f"t:{tenant.name}:rate", f"t:{tenant.name}:images:{day}"]
        reply = await store.limit(keys, limit_args(tenant, images))
        if reply is None:  # counted here instead: local admit takes its own slot when it allows
            state.done()
            decision = state.admit(tenant, images, self.clock(), wall)
            if not decision.allowed:
                state.enter()  # held again for the caller, which gives it back on a refusal
            return decision
        decision = shared_decision(tenant, reply, wall)
        if decision.allowed:  # what the status page shows: the count every replica shares
            state.day, state.images_today = day, int(reply[3])
        return decision

    def status(self, table: RoutingTable) -> list[dict[str, Any]]:
        """What the status page shows per tenant: its limits, in flight, and outcomes."""
        out = []
        for tenant in table.tenants:
            state = self._state.get(tenant.name)
            counts = {o: n for (t, o), n in self._counts.items() if t == tenant.name}
            out.append({
                "name": tenant.name, "requests_per_s": tenant.requests_per_s, "burst": tenant.burst,
                "images_per_day": tenant.images_per_day, "max_concurrency": tenant.max_concurrency,
                "inflight": state.inflight if state else 0, "images_today": state.images_today if state else 0,
                **counts,
            })  # fmt: skip
        return out
