"""Replicas of one Triton backend: least-outstanding-requests balancing, health checks.

Each replica has its own keep-alive pool, a count of requests in flight, a health flag,
a circuit breaker for the replica (transport failures, failed readiness checks) and one
per model on it (that model's timeouts and 5xx), so one frozen replica does not make
the model look broken while another replica serves it. A replica is taken out at once when a connection to it fails,
or when its readiness check (``GET /v2/health/ready``, every ``health_interval_s``)
fails or times out — which is how a frozen process is noticed — and is put back when
the check passes again. A failed check also counts against the replica's circuit, so a
frozen replica's circuit opens; once it is ready again, one probe request closes it.
Each replica keeps a :class:`~image_router.policy.forecast.Lane` per model (what is executing
and queued there, abandoned work still running, a live service-time estimate), so a
slow or stalled replica is judged by its own state and never makes the model look slow
on the others. Among the replicas that are in and whose circuit allows it, the one with
the fewest requests ahead wins (abandoned work still running counts), then the one
that has served fewest; the budget policy reads the best replica's predicted finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from image_router.backends._grpc import GrpcChannel
from image_router.backends._http1 import Http1Pool
from image_router.config.table import Backend, Model
from image_router.policy.circuit import CircuitBreaker
from image_router.policy.forecast import Forecast, Lane

__all__ = ["Replica", "ReplicaSet"]

log = logging.getLogger("router.replicas")


@dataclass(eq=False)
class Replica:
    url: str
    pool: Http1Pool
    breaker: CircuitBreaker
    grpc: GrpcChannel | None = None  # inference over gRPC (the backend's protocol: grpc)
    healthy: bool = True
    outstanding: int = 0
    served: int = 0
    failed: int = 0
    models: dict[str, CircuitBreaker] = field(default_factory=dict)
    lanes: dict[str, Lane] = field(default_factory=dict)
    # what this gateway's calls used here, per model, for reconciling with Triton's own
    # statistics (image_router/billing/reconcile.py): the compute of the answers it took (ns),
    # and the time of calls it gave up on, by reason (s: wasted, never billed)
    answered_ns: dict[str, int] = field(default_factory=dict)
    wasted_s: dict[tuple[str, str], float] = field(default_factory=dict)

    def took(self, model: str, compute_ns: int) -> None:
        self.answered_ns[model] = self.answered_ns.get(model, 0) + compute_ns

    def gave_up(self, model: str, reason: str, seconds: float) -> None:
        self.wasted_s[model, reason] = self.wasted_s.get((model, reason), 0.0) + max(0.0, seconds)

    def model_breaker(self, model: str) -> CircuitBreaker:
        """The circuit of one model on this replica (timeouts and 5xx of that model)."""
        breaker = self.models.get(model)
        if breaker is None:
            breaker = self.models[model] = CircuitBreaker(self.breaker.policy)
        return breaker

    def lane(self, model: Model) -> Lane:
        """The queue of ``model`` on this replica (made on first use, seeded by its hint)."""
        lane = self.lanes.get(model.lane_key)
        if lane is None:
            lane = self.lanes[model.lane_key] = Lane(model.latency_hint_ms / 1000, model.instances)
        return lane

    def usable(self, model: str, now: float) -> bool:
        return self.healthy and self.breaker.would_allow(now) and self.model_breaker(model).would_allow(now)

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "circuit": self.breaker.state,
            "model_circuits": {m: b.state for m, b in self.models.items()},
            "outstanding": self.outstanding,
            "lanes": {
                key: {
                    "pending": lane.pending,
                    "service_ms": round(1000 * lane.estimate.typical_s, 1),
                    "floor_ms": round(1000 * lane.estimate.floor_s, 1),
                    "pass_factor": lane.passes(),  # T(b) / (b singletons), per measured batch size
                }
                for key, lane in self.lanes.items()
            },
            "served": self.served,
            "failed": self.failed,
            "wasted_s": _by_model(self.wasted_s),
        }


def _by_model(wasted: dict[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    nested: dict[str, dict[str, float]] = {}
    for (model, reason), seconds in wasted.items():
        nested.setdefault(model, {})[reason] = seconds
    return nested


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a headless Service: one per ready pod)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class ReplicaSet:
    def __init__(self, spec: Backend, clock: Callable[[], float], resolve: Resolver = resolve_addresses) -> None:
        self.spec = spec
        self.clock = clock
        self._resolve = resolve
        targets = spec.grpc_targets or ("",) * len(spec.urls)
        self.replicas = [self._replica(url, target) for url, target in zip(spec.urls, targets, strict=True)]
        self._health: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        self._retired: list[Replica] = []

    def _replica(self, url: str, grpc_target: str) -> Replica:
        return Replica(
            url,
            Http1Pool.for_url(url, self.spec.max_connections, self.spec.connect_timeout_s),
            CircuitBreaker(self.spec.circuit),
            GrpcChannel(grpc_target) if self.spec.protocol == "grpc" else None,
        )

    def available(self, model: str) -> bool:
        """Whether some replica could take ``model`` now (health and circuits)."""
        now = self.clock()
        return any(r.usable(model, now) for r in self.replicas)

    def forecast(self, model: Model, extra_ahead: int = 0, units: float = 1.0) -> Forecast | None:
        """When a request of ``units`` of work (:func:`~image_router.policy.forecast.work_units`)
        sent now would finish on the best usable replica, with ``extra_ahead`` more
        requests spread over the usable replicas first."""
        now = self.clock()
        if len(self.replicas) == 1:  # the usual case, asked on every request: no min()
            only = self.replicas[0]
            return only.lane(model).forecast(now, extra_ahead, units) if only.usable(model.name, now) else None
        usable = [r for r in self.replicas if r.usable(model.name, now)]
        if not usable:
            return None
        share = -(-extra_ahead // len(usable))
        # every replica is compared (a slow or frozen one is seen for what it is), by its
        # expected finish alone; only the winner's whole forecast is made (1/3 the plays)
        best = min(usable, key=lambda r: r.lane(model).expected_s(now, share, units))
        return best.lane(model).forecast(now, share, units)

    def choose(self, model: Model, exclude: set[Replica]) -> Replica | None:
        """The usable replica (not in ``exclude``) with the fewest requests ahead for
        ``model`` — abandoned work it is still computing counts — then the one that has
        served fewest; in a half-open circuit this takes its one probe.

        Not the earliest predicted finish: a replica whose estimate went bad (a freeze,
        a slow spell) would then get no request that could correct it for as long as
        the others keep up (measured: a resumed replica served nothing in 10 sequential
        requests). A slower replica still gets less, as its requests stay ahead longer."""
        now = self.clock()
        candidates = [r for r in self.replicas if r not in exclude and r.usable(model.name, now)]
        if not candidates:
            return None
        best = (
            candidates[0]
            if len(candidates) == 1
            else min(candidates, key=lambda r: (r.lane(model).ahead(now), r.served))
        )
        if best.model_breaker(model.name).allow(now) and best.breaker.allow(now):
            return best
        return None

    def mark_down(self, replica: Replica, why: str) -> None:
        if replica.healthy and len(self.replicas) > 1:
            log.warning("replica %s taken out: %s", replica.url, why)
            replica.healthy = False

    # -- active health checks ---------------------------------------------------------

    def start(self) -> None:
        """Start checking (needs a running loop; idempotent). One replica needs no checks:
        there is nowhere else to send, and its failures reach the dispatcher directly —
        unless replicas are discovered, when one may become several at any time."""
        if self._health is None and (len(self.replicas) > 1 or self.spec.discover):
            self._health = asyncio.get_running_loop().create_task(self._check_forever())
        if self._discovery is None and self.spec.discover:
            self._discovery = asyncio.get_running_loop().create_task(self._discover_forever())

    # -- discovery (discover: dns) ----------------------------------------------------

    async def _discover_forever(self) -> None:
        while True:
            try:
                await self.discover()
            except Exception as exc:  # noqa: BLE001 - DNS down: keep the replicas we have
                log.warning("discovering replicas failed, keeping %d: %s", len(self.replicas), exc)
            await asyncio.sleep(self.spec.discover_interval_s)

    async def discover(self) -> None:
        """One replica per address each configured host resolves to: a new address (a pod
        that became ready) is added, one that is gone (a pod that went away) removed;
        those that stay keep their lanes, circuits and counts."""
        wanted: dict[str, str] = {}
        for url in self.spec.urls:
            parsed = urlsplit(url)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            for address in await self._resolve(parsed.hostname or "", port):
                host = f"[{address}]" if ":" in address else address
                grpc = f"{host}:{self.spec.grpc_port}" if self.spec.protocol == "grpc" else ""
                wanted[f"{parsed.scheme}://{host}:{port}"] = grpc
        if not wanted:
            return  # resolving to nothing is a DNS hiccup as often as an empty Service
        current = {r.url: r for r in self.replicas}
        if set(wanted) == set(current):
            return
        kept = [r for url, r in current.items() if url in wanted]
        added = [self._replica(url, wanted[url]) for url in wanted if url not in current]
        gone = [r for url, r in current.items() if url not in wanted]
        self.replicas = kept + added  # one assignment: a request sees the old list or the new
        self._retired.extend(gone)
        log.warning("replicas now %s (added %d, removed %d)", [r.url for r in self.replicas], len(added), len(gone))
        for replica in [r for r in self._retired if r.outstanding == 0]:
            self._retired.remove(replica)
            await self._close(replica)

    async def _close(self, replica: Replica) -> None:
        await replica.pool.aclose()
        if replica.grpc is not None:
            await replica.grpc.aclose()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._check(r) for r in self.replicas))
            await asyncio.sleep(self.spec.health_interval_s)

    async def _check(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self.spec.health_timeout_s):
                response = await replica.pool.request("/v2/health/ready", b"", {}, method="GET")
            ok = response.status == 200
        except (OSError, TimeoutError):
            ok = False
        if ok and not replica.healthy:
            log.warning("replica %s is ready again", replica.url)
        if not ok:
            replica.breaker.record(self.clock(), False)  # a frozen replica opens its circuit
            self.mark_down(replica, "readiness check failed")
        replica.healthy = ok or len(self.replicas) == 1

    async def aclose(self) -> None:
        for task in (self._health, self._discovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for replica in [*self.replicas, *self._retired]:
            await self._close(replica)

    def snapshot(self) -> list[dict[str, Any]]:
        return [r.snapshot() for r in self.replicas]
