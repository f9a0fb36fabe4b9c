"""The gRPC server: the KServe service and ``grpc.health.v1``, with limits.

It runs on the gateway's own event loop (``grpc.aio``), started and stopped by the
app's lifespan beside HTTP. Limits keep one client from taking the gateway down:

- a request message over ``max_receive_bytes`` (default 4 MiB; an infer request is a
  prompt and a few integers) is refused by gRPC with ``RESOURCE_EXHAUSTED`` before
  the gateway reads it;
- at most ``max_concurrent_rpcs`` calls are handled at once (further ones get
  ``RESOURCE_EXHAUSTED`` at once, not a queue), and at most ``max_streams`` HTTP/2
  streams are open on one connection;
- answers may be large (images), up to ``max_send_bytes``;
- before any of that, :class:`~image_router.rpc.guard.Guard` checks the key from metadata (in
  keys mode, a call without one is ``UNAUTHENTICATED`` with its body never parsed) and
  ends a stream whose first request does not come within ``first_message_s``;
- connections: keep-alive pings every ``keepalive_s`` (a dead peer is dropped after
  ``keepalive_timeout_s``), a connection with no call for ``idle_s`` is closed, and
  clients may not ping more often than every 10 s without calls (gRPC's own defence).

Health: the overall service (``""``) and ``inference.GRPCInferenceService`` are
``SERVING`` while at least one backend is ready — asked of each backend, a hosted tier
included (:meth:`~image_router.gateway.Gateway.ready`) — checked every ``health_interval_s``,
and ``NOT_SERVING`` before the first check and whenever nothing can answer; on shutdown
both turn ``NOT_SERVING`` first (a client watching sees it), so Kubernetes' gRPC probes
take the pod out before in-flight calls are drained (up to ``grace_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from image_router.gateway import Gateway
from image_router.rpc.guard import Guard
from image_router.rpc.service import SERVICE_NAME, KServeService
from image_router.telemetry import Tracing
from image_router.telemetry.requests import Recorder

__all__ = ["GrpcEdge", "GrpcOptions"]

log = logging.getLogger("router.rpc")


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    host: str = "0.0.0.0"
    port: int = 8001  # Triton's own gRPC port: clients move over by changing the host only
    max_receive_bytes: int = 4 << 20
    max_send_bytes: int = 512 << 20
    max_concurrent_rpcs: int = 2048
    max_streams: int = 100  # HTTP/2's customary SETTINGS_MAX_CONCURRENT_STREAMS
    first_message_s: float = 30.0
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    idle_s: float = 300.0
    grace_s: float = 10.0
    health_interval_s: float = 1.0
    # the workers of `router serve --workers N` all bind the port; a lone gateway must
    # fail on a port another process holds rather than share it unnoticed
    reuse_port: bool = False


class GrpcEdge:
    def __init__(self, gateway: Gateway, recorder: Recorder, tracing: Tracing, options: GrpcOptions) -> None:
        self.gateway = gateway
        self.options = options
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", options.max_receive_bytes),
                ("grpc.max_send_message_length", options.max_send_bytes),
                ("grpc.max_concurrent_streams", options.max_streams),
                ("grpc.keepalive_time_ms", int(options.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout_s * 1000)),
                ("grpc.max_connection_idle_ms", int(options.idle_s * 1000)),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.so_reuseport", int(options.reuse_port)),
            ],
            maximum_concurrent_rpcs=options.max_concurrent_rpcs,
            interceptors=[Guard(gateway.authenticate, options.first_message_s)],
        )
        self.server.add_generic_rpc_handlers((KServeService(gateway, recorder, tracing).handler(),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for name in ("", SERVICE_NAME):  # until the first check says otherwise: nothing is known yet
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self.server.add_insecure_port(f"{self.options.host}:{self.options.port}")
        if self.port == 0:
            raise OSError(f"gRPC: cannot listen on {self.options.host}:{self.options.port}")
        await self.server.start()
        self._watch = asyncio.create_task(self._watch_readiness())
        log.info("gRPC listening on %s:%d", self.options.host, self.port)

    async def _watch_readiness(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            try:  # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the check's
                # answer when a cancel lands as it completes, swallowing the cancel; this
                # loop then never ended and a shutdown waited for it until SIGKILL
                async with asyncio.timeout(self.options.health_interval_s * 2):
                    ready = await self.gateway.ready()
            except Exception:  # noqa: BLE001 - a failed check is "not ready", never a crash
                ready = False
            for name in ("", SERVICE_NAME):
                await self.health.set(name, serving if ready else not_serving)
            await asyncio.sleep(self.options.health_interval_s)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.options.grace_s)
