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
from router.errors import (
    AllTiersFailed,
    BackendError,
    BackendRejected,
    BackendTimeout,
    BudgetExhausted,
    Overloaded,
)
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
        self._inflight: dict[str, int] = {}
        self.pool = pool
        self.stats = stats
        self.clock = clock

    def _full(self, model: Model) -> bool:
        """At its ``max_concurrency``: the tier is skipped at once (reason ``full``), so
        the gateway never queues unbounded work behind a busy tier."""
        limit = model.max_concurrency
        return limit is not None and self._inflight.get(model.name, 0) >= limit

    def inflight(self) -> dict[str, int]:
        return {m: n for m, n in self._inflight.items() if n}

    async def _attempt(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None
    ) -> ImageResult | str:
        """One call under its own timeout: the result, or why it failed (a fallback reason).

        A rejected input is raised instead: no other tier would take it either.
        """
        name = model.name
        self._inflight[name] = self._inflight.get(name, 0) + 1
        t0 = self.clock()
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.pool.get(model.backend).generate(model, request, timeout_s, priority)
        except (TimeoutError, BackendTimeout):
            self._record_timeout(name, self.clock() - t0)
            return "timeout"
        except BackendRejected:
            raise
        except BackendError as exc:
            log.warning("attempt at %s failed: %s %s", name, exc.code, exc.message)
            return exc.code.removeprefix("backend_")
        except Exception:  # a backend bug must not cost the client its fallback
            log.exception("attempt at %s failed unexpectedly", name)
            return "error"
        finally:
            self._inflight[name] -= 1
        self.stats.record(name, self.clock() - t0)
        return result

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
            for name in [m for m in remaining_chain if self._full(table.models[m])]:
                remaining_chain.remove(name)
                reasons.append((name, "full"))
            plan = plan_attempt(remaining_chain, deadline - self.clock(), p95, self.margin_s)
            reasons.extend(plan.skipped)
            if plan.attempt is None:
                break
            name = plan.attempt.model
            model = table.models[name]
            attempts += 1
            t0 = self.clock()
            first_attempt_at = t0 if first_attempt_at is None else first_attempt_at
            outcome = await self._attempt(model, request, plan.attempt.timeout_s, priority)
            elapsed = self.clock() - t0
            backend_s += elapsed
            if isinstance(outcome, str):
                reasons.append((name, outcome))
            else:
                now = self.clock()
                return Served(
                    result=outcome,
                    route=route,
                    model=model,
                    attempts=attempts,
                    fallback=tuple(reasons),
                    canary=choice.arm.canary and name == choice.arm.model,
                    queue_s=(first_attempt_at or now) - start,
                    backend_s=backend_s,
                    total_s=now - start,
                )
            remaining_chain = remaining_chain[remaining_chain.index(name) + 1 :]
        detail = ", ".join(f"{m}:{why}" for m, why in reasons)
        if attempts == 0 and any(why == "full" for _, why in reasons):
            raise Overloaded(f"every tier is at its concurrency limit ({detail})", route=route.name)
        timed_out = any(why in ("timeout", "slow", "no_room") for _, why in reasons)
        if timed_out or deadline - self.clock() <= 0:
            raise BudgetExhausted(
                f"no tier could answer within the {route.budget_ms:g} ms budget ({detail})",
                route=route.name,
                attempts=attempts,
            )
        raise AllTiersFailed(f"every tier failed ({detail})", route=route.name, attempts=attempts)
