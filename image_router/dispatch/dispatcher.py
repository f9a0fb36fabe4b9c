"""The replica-wide side of dispatch: what outlives one request.

Per model an admission gate (``max_concurrency`` and its bounded priority queue),
the forecasts that fold those gates into the backends' own, the recent-p95 a hedge
waits for, the downgrade ring the status page shows and the metrics; the result
cache's own replica-wide state (served versions, flights, leases) sits behind the
:class:`~image_router.dispatch.stored.StoredTiers` seam given here. One request's walk
holds its own state in a :class:`~image_router.dispatch.walk.Walk`, made by :meth:`serve`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from image_router.admission import AdmissionGate
from image_router.backends.base import ImageRequest
from image_router.backends.pool import BackendPool
from image_router.config.table import Model, Route, RoutingTable
from image_router.decide import Decision
from image_router.dispatch.attempt import Attempts
from image_router.dispatch.outcome import Downgrade
from image_router.dispatch.stored import Hold, NoStore, StoredTiers
from image_router.dispatch.walk import Walk
from image_router.errors import BudgetExhausted
from image_router.policy.forecast import Forecast
from image_router.served import Served
from image_router.stats import LatencyStats
from image_router.telemetry import Metrics, Tracing

__all__ = ["MARGIN_S", "Dispatcher"]

MARGIN_S = 0.02  # the gateway's own time between giving up on one attempt and starting the next


class Dispatcher:
    def __init__(
        self,
        pool: BackendPool,
        stats: LatencyStats,
        clock: Callable[[], float],
        *,
        stored: StoredTiers | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.pool = pool
        self.stats = stats
        self.clock = clock
        self.wall_clock: Callable[[], float] = time.time
        self.margin_s = MARGIN_S
        self.metrics = metrics
        self.stored: StoredTiers = stored if stored is not None else NoStore()
        self.recent_downgrades: deque[dict[str, object]] = deque(maxlen=50)
        self._gates: dict[str, AdmissionGate] = {}
        tracer = tracing.tracer if tracing is not None else None
        self.attempts = Attempts(pool, stats, clock, self.gate, tracer)

    async def serve(self, decision: Decision, hold: Hold | None = None) -> Served:
        """Serve what was decided, within the route's budget capped by the decision's
        ``budget_s`` (a client's own deadline: a gRPC deadline, KServe's ``timeout``).
        ``hold`` is given every task this request starts that goes on after it may have
        gone (the flight it leads on a cached route), so a caller can keep what the
        work still uses (a tenant's concurrency slot) until it really ends."""
        ending = await Walk(self, decision, hold).run()
        if ending.downgrade is not None:
            self._note(ending.downgrade)
        if ending.error is not None:
            if isinstance(ending.error, BudgetExhausted) and self.metrics is not None:
                self.metrics.budget_exhausted.labels(decision.route.name).inc()
            raise ending.error
        assert ending.served is not None
        if ending.served.hedged and self.metrics is not None:
            self.metrics.hedges.labels(decision.route.name, ending.served.model.name).inc()
        return ending.served

    def cache_key(self, route: Route, model: Model, request: ImageRequest, scope: str = "") -> object:
        """What ``model``'s result for ``request`` is stored under (see :class:`StoredTiers`)."""
        return self.stored.key(route, model, request, scope)

    def _note(self, downgrade: Downgrade) -> None:
        if self.metrics is not None:
            for model, why in downgrade.reasons:
                self.metrics.downgrades.labels(downgrade.route, model, why).inc()
        self.recent_downgrades.append(
            {
                "at": self.wall_clock(),
                "route": downgrade.route,
                "served_by": downgrade.served_by,
                "reasons": [list(r) for r in downgrade.reasons],
            }
        )

    # -- per model ---------------------------------------------------------------------

    def gate(self, model: Model) -> AdmissionGate:
        """The model's admission gate, following the table's limits (they change on reload)."""
        gate = self._gates.get(model.name)
        if gate is None:
            gate = self._gates[model.name] = AdmissionGate(model.max_concurrency, model.max_queue)
        gate.limit, gate.max_queue = model.max_concurrency, model.max_queue
        return gate

    def available(self, model: Model) -> bool:
        """Some endpoint of the model's backend has a closed (or probing) circuit."""
        return self.pool.get(model.backend).available(model)

    def inflight(self) -> dict[str, int]:
        return {m: g.inflight for m, g in self._gates.items() if g.inflight}

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per model: in flight and queued (circuits are per endpoint, in the backends)."""
        return {name: {"inflight": g.inflight, "queued": g.queued} for name, g in sorted(self._gates.items())}

    def p95_s(self, table: RoutingTable) -> Callable[[str], float]:
        """Recent p95 of answered attempts (the hint until there are some): what a
        ``hedge: {after: p95}`` waits for. Budget decisions use :meth:`forecast`."""

        def p95(name: str) -> float:
            model = table.models[name]
            return self.stats.p95(name, model.latency_hint_ms / 1000)

        return p95

    def idle(self, model: Model, whole_backend: bool = True) -> bool:
        """Nothing ahead of a new request on ``model`` and a free admission slot nobody
        waits for: background work sent now takes no slot a live request was waiting for.
        With ``whole_backend``, nothing in flight on the rest of its backend either, when
        the backend can tell: one Triton's models share its devices (one GPU; here, two
        CPU cores), so a job on quality slows every preview answered beside it
        (bench/scenario.py, mode J). A rollout's shadows ask for the model alone: they
        are how a canary gets measured, and beside steady baseline traffic on the same
        Triton they would never run."""
        gate = self.gate(model)
        free = gate.limit is None or (gate.inflight < gate.limit and gate.queued == 0)
        forecast = self.forecast(model)
        if not free or forecast is None or forecast.ahead != 0:
            return False
        busy = getattr(self.pool.get(model.backend), "busy", None) if whole_backend else None
        return busy is None or not busy()

    def forecast(
        self, model: Model, priority: int | None = None, tenant: str | None = None, units: float = 1.0
    ) -> Forecast | None:
        """The backend's forecast for ``model`` (a request of ``units`` of work), behind
        this gateway's own admission queue when the model's gate is full (``None``: no
        usable endpoint). Given the request's priority and tenant, only the waiters it
        would not overtake count."""
        gate = self.gate(model)
        full = gate.limit is not None and (gate.inflight >= gate.limit or gate.queued > 0)
        if not full:
            return self.pool.get(model.backend).forecast(model, 0, units)
        ahead = gate.queued if priority is None or tenant is None else gate.ahead_of(priority, tenant)
        return self.pool.get(model.backend).forecast(model, ahead + 1, units)
