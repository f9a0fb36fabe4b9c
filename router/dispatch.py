"""Carrying out a routing decision within the request's latency budget.

The dispatcher owns the I/O side of the budget: it fixes the deadline on arrival,
asks :func:`router.policy.budget.plan_attempt` which tier to try with what timeout,
enforces that timeout itself (Triton cannot stop a running request; on timeout the
call is cancelled and its connection dropped), feeds the live latency estimates, and
walks down the fallback chain on timeouts, 5xx and unavailability. A model that
rejects the input (4xx) is not retried elsewhere: the input would be just as bad.

Guarantee: a call returns or raises no later than ``budget + one scheduling tick``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from router.backends.base import ImageRequest, ImageResult
from router.backends.pool import BackendPool
from router.config.table import Model, Route, RoutingTable
from router.errors import AllTiersFailed, BackendError, BackendRejected, BackendTimeout, BudgetExhausted
from router.policy.budget import chain_for, plan_attempt
from router.policy.split import Choice
from router.stats import LatencyStats

__all__ = ["Dispatcher", "Served"]

log = logging.getLogger("router.dispatch")


@dataclass(frozen=True, slots=True)
class Served:
    """A successful answer and everything needed to tag it."""

    result: ImageResult
    route: Route
    model: Model
    attempts: int
    fallback: tuple[tuple[str, str], ...]
    canary: bool
    queue_s: float
    backend_s: float
    total_s: float

    @property
    def model_tag(self) -> str:
        version = self.result.model_version or self.model.version
        return f"{self.model.name}@{version}" if version else self.model.name


class Dispatcher:
    def __init__(
        self, pool: BackendPool, stats: LatencyStats, clock: Callable[[], float], margin_s: float = 0.02
    ) -> None:
        self.margin_s = margin_s
        self.pool = pool
        self.stats = stats
        self.clock = clock

    def _record_timeout(self, model: str, waited_s: float) -> None:
        """A timeout only says the tier needs *more* than ``waited_s``; count it as
        twice that, so one stall is enough to skip the tier where it cannot fit (an
        abandoned request still burns the backend's compute) until the sample ages
        out of the window and the tier is probed again."""
        self.stats.record(model, 2 * waited_s)

    def p95_s(self, table: RoutingTable) -> Callable[[str], float]:
        def p95(name: str) -> float:
            model = table.models[name]
            return self.stats.p95(name, model.latency_hint_ms / 1000)

        return p95

    async def serve(
        self,
        table: RoutingTable,
        route: Route,
        choice: Choice,
        request: ImageRequest,
        priority: int | None = None,
        started: float | None = None,
    ) -> Served:
        start = self.clock() if started is None else started
        deadline = start + route.budget_ms / 1000
        remaining_chain = list(chain_for(choice.arm.model, route.fallback))
        reasons: list[tuple[str, str]] = []
        attempts = 0
        backend_s = 0.0
        first_attempt_at: float | None = None
        p95 = self.p95_s(table)
        while remaining_chain:
            plan = plan_attempt(remaining_chain, deadline - self.clock(), p95, self.margin_s)
            reasons.extend(plan.skipped)
            if plan.attempt is None:
                break
            name = plan.attempt.model
            model = table.models[name]
            attempts += 1
            t0 = self.clock()
            first_attempt_at = t0 if first_attempt_at is None else first_attempt_at
            try:
                async with asyncio.timeout(plan.attempt.timeout_s):
                    result = await self.pool.get(model.backend).generate(
                        model, request, plan.attempt.timeout_s, priority
                    )
            except (TimeoutError, BackendTimeout):
                self._record_timeout(name, self.clock() - t0)
                reasons.append((name, "timeout"))
            except BackendRejected:
                raise
            except BackendError as exc:
                log.warning("attempt at %s failed: %s %s", name, exc.code, exc.message)
                reasons.append((name, exc.code.removeprefix("backend_")))
            except Exception:  # a backend bug must not cost the client its fallback
                log.exception("attempt at %s failed unexpectedly", name)
                reasons.append((name, "error"))
            else:
                elapsed = self.clock() - t0
                self.stats.record(name, elapsed)
                backend_s += elapsed
                now = self.clock()
                return Served(
                    result=result,
                    route=route,
                    model=model,
                    attempts=attempts,
                    fallback=tuple(r for r in reasons if r[0] != name),
                    canary=choice.arm.canary and name == choice.arm.model,
                    queue_s=(first_attempt_at or now) - start,
                    backend_s=backend_s,
                    total_s=now - start,
                )
            backend_s += self.clock() - t0
            remaining_chain = remaining_chain[remaining_chain.index(name) + 1 :]
        detail = ", ".join(f"{m}:{why}" for m, why in reasons)
        timed_out = any(why in ("timeout", "slow", "no_room") for _, why in reasons)
        if timed_out or deadline - self.clock() <= 0:
            raise BudgetExhausted(
                f"no tier could answer within the {route.budget_ms:g} ms budget ({detail})",
                route=route.name,
                attempts=attempts,
            )
        raise AllTiersFailed(f"every tier failed ({detail})", route=route.name, attempts=attempts)
