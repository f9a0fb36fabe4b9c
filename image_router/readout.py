"""What the admin API, the status page and the metrics collector read from a running
gateway: no I/O on the request path, nothing that changes state."""

from __future__ import annotations

import asyncio
from typing import Any

from image_router.backends.pool import BackendPool
from image_router.cache import ResultCache
from image_router.cache.coordinate import Coordinator
from image_router.cache.hitters import HeavyHitters
from image_router.config.table import RoutingTable
from image_router.dispatch import Dispatcher
from image_router.fill import Filler
from image_router.rollouts import RolloutController
from image_router.stats import LatencyStats
from image_router.tenancy import TenantGate

__all__ = ["Readout"]


class Readout:
    """Read models, mixed into the gateway (which provides the collaborators)."""

    stats: LatencyStats
    pool: BackendPool
    dispatcher: Dispatcher
    coordinator: Coordinator
    cache: ResultCache | None
    fill: Filler
    hitters: HeavyHitters
    rollouts: RolloutController
    tenants: TenantGate

    @property
    def table(self) -> RoutingTable:
        raise NotImplementedError  # the gateway's

    def latency(self) -> dict[str, Any]:
        """Answered latencies and outcomes per model over the last minute."""
        return self.stats.snapshot()

    def models(self) -> dict[str, Any]:
        """Per model: in flight and queued for admission."""
        return self.dispatcher.snapshot()

    def recent_downgrades(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest downgrades, newest first."""
        return list(self.dispatcher.recent_downgrades)[::-1][:limit]

    def tenant_status(self) -> list[dict[str, Any]]:
        return self.tenants.status(self.table)

    async def cache_status(self, top: int | None = None) -> dict[str, Any] | None:
        """The cache's store, counts and background work (``top``: also the most asked
        prompts); ``None`` without a cache."""
        if self.cache is None:
            return None
        status = {**await self.cache.describe(), "fill": self.fill.describe()}
        if top is not None:
            status["top_prompts"] = self.hitters.top(top)
        return status

    def backend_snapshots(self) -> dict[str, list[dict[str, Any]]]:
        return {name: backend.snapshot() for name, backend in self.pool.items()}

    def state(self) -> dict[str, Any]:
        """What the metrics collector and the status page read (no I/O)."""
        return {
            "models": self.dispatcher.snapshot(),
            "backends": self.backend_snapshots(),
            "retries": {name: getattr(b, "retries", 0) for name, b in self.pool.items()},
            "hedges": {name: getattr(b, "hedges", 0) for name, b in self.pool.items()},
            "digest": self.table.digest,
            "cache": self._cache_state(),
            "rollouts": self.rollouts.state(),
        }

    def _cache_state(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        return {**self.cache.counters(), "coalesced": self.coordinator.flights.coalesced, "fill": self.fill.describe()}

    async def ready(self) -> bool:
        """Ready when at least one configured backend answers ready. Asked of all at once:
        a hosted tier that is down may take its probe's bound to say so, and several of
        them one after another would hold a readiness probe for the sum."""
        checks = {asyncio.ensure_future(backend.ready()) for _, backend in self.pool.items()}
        try:
            while checks:
                done, checks = await asyncio.wait(checks, return_when=asyncio.FIRST_COMPLETED)
                if any(not task.exception() and task.result() for task in done):
                    return True
            return False
        finally:
            for task in checks:
                task.cancel()
