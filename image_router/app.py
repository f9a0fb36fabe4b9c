"""Assembling the Starlette application and its lifecycle.

``create_app`` wires the process's :class:`~image_router.runtime.Runtime` (config → gateway
→ reloader, telemetry) to the HTTP routes and, when asked, the gRPC edge. Its lifespan
starts the runtime and the gRPC server and, on shutdown, stops the gRPC server
(draining its calls) before the runtime closes the backend clients.

In ``tenants: {mode: keys}`` the read-outs are closed (:func:`_readout`): usage
(``/metrics``, model statistics) needs the admin token, model metadata, config,
readiness and the repository index any valid key (docs/security.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from image_router.errors import NotFound
from image_router.http import (
    admin_api,
    budgets_api,
    canary_api,
    edits,
    image_files,
    images_api,
    jobs_admin,
    jobs_api,
    kserve_api,
    models_api,
    openapi,
    reconcile_api,
    status_page,
)
from image_router.http.admin_api import SignInThrottle, check_readout
from image_router.http.errors import RequestIdMiddleware, exception_handlers
from image_router.http.lane import Endpoint, GatewayApp, ImageLane
from image_router.http.observe import ObserveMiddleware, Observer
from image_router.http.usage_api import admin_usage, tenant_usage
from image_router.rpc import GrpcEdge, GrpcOptions
from image_router.runtime import Runtime
from image_router.telemetry import Metrics, Tracing
from image_router.telemetry.metrics import CONTENT_TYPE

__all__ = ["create_app"]

log = logging.getLogger("router.app")


def _readout(endpoint: Endpoint, admin_only: bool = False) -> Endpoint:
    """``endpoint`` behind :func:`~image_router.http.admin_api.check_readout`: in keys mode,
    a key (or, ``admin_only``, the admin token) before anything is read."""

    async def call(request: Request) -> Response:
        check_readout(request, admin_only)
        return await endpoint(request)

    return call


def _routes() -> list[Route]:
    k = kserve_api
    stats = _readout(k.model_stats, admin_only=True)  # usage counts: the operator's
    return [  # the hot path first: Starlette tries routes in order, ~1.5 µs each
        Route("/v2/models/{model}/infer", k.infer, methods=["POST"]),
        Route("/healthz", admin_api.healthz, methods=["GET"]),
        Route("/readyz", admin_api.readyz, methods=["GET"]),
        Route("/v1/images/generations", images_api.openai_images, methods=["POST"]),
        Route("/v1/images/edits", edits.openai_edits, methods=["POST"]),
        Route("/v1/images/variations", edits.openai_variations, methods=["POST"]),
        Route("/api/v1/generate", images_api.generate, methods=["POST"]),
        *jobs_api.ROUTES,  # async jobs (issue 32): before /v1/images/{name}
        Route("/v1/images/{name}", image_files.image_file, methods=["GET", "HEAD"]),
        Route("/v1/usage", tenant_usage, methods=["GET"]),
        *models_api.ROUTES,
        *openapi.ROUTES,
        Route("/v2", k.server_metadata, methods=["GET"]),
        Route("/v2/health/live", k.live, methods=["GET"]),
        Route("/v2/health/ready", k.ready, methods=["GET"]),
        Route("/v2/repository/index", _readout(k.repository_index), methods=["POST"]),
        Route("/v2/models/stats", stats, methods=["GET"]),
        Route("/v2/models/{model}", _readout(k.model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", _readout(k.model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", _readout(k.model_ready), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", _readout(k.model_ready), methods=["GET"]),
        Route("/v2/models/{model}/config", _readout(k.model_config), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/config", _readout(k.model_config), methods=["GET"]),
        Route("/v2/models/{model}/stats", stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", k.infer, methods=["POST"]),
        Route("/admin/reload", admin_api.admin_reload, methods=["POST"]),
        Route("/admin/config", admin_api.admin_config, methods=["GET"]),
        Route("/admin/explain", admin_api.admin_explain, methods=["POST"]),
        Route("/admin/cache", admin_api.admin_cache, methods=["GET"]),
        Route("/admin/usage", admin_usage, methods=["GET"]),
        Route("/admin/cache/purge", admin_api.admin_cache_purge, methods=["POST"]),
        Route("/admin/pregenerate", admin_api.admin_pregenerate, methods=["POST"]),
        Route("/admin/pregenerate", admin_api.admin_pregenerate_status, methods=["GET"]),
        Route("/admin/canary", canary_api.canary_list, methods=["GET"]),
        Route("/admin/canary/{route}", canary_api.canary_one, methods=["GET"]),
        Route("/admin/canary/{route}/{action}", canary_api.canary_action, methods=["POST"]),
        *jobs_admin.ROUTES,
        *budgets_api.ROUTES,
        *reconcile_api.ROUTES,
        Route("/admin/", status_page.status_page, methods=["GET"]),
        Route("/admin/status.json", status_page.status_json, methods=["GET"]),
        Route("/admin/login", status_page.login_form, methods=["GET"]),
        Route("/admin/login", status_page.login, methods=["POST"]),
        Route("/metrics", _readout(_metrics, admin_only=True), methods=["GET"]),
    ]


LANES = ("/v1/images/generations", "/api/v1/generate")  # with KServe infer: the image lane, ahead of the stack


def _lanes(routes: list[Route]) -> dict[str, Endpoint]:
    """The endpoints of :data:`LANES`' ``POST`` routes, as the route list has them (so a
    wrapper put on one there is not bypassed)."""
    lanes = {r.path: r.endpoint for r in routes if r.path in LANES and "POST" in (r.methods or ())}
    assert len(lanes) == len(LANES), "every lane is a POST route"
    return lanes


async def _metrics(request: Request) -> Response:
    metrics: Metrics | None = request.app.state.metrics
    if metrics is None:
        raise NotFound("metrics are off (router serve --no-metrics)")
    return Response(metrics.render(), media_type=CONTENT_TYPE)


def create_app(
    routes_path: str | Path,
    *,
    admin_token: str | None = None,
    watch: bool = True,
    access_log: bool = True,
    access_log_flush_s: float = 1.0,
    metrics: bool = True,
    tracing: Tracing | None = None,
    grpc: GrpcOptions | None = None,
) -> Starlette:
    """Build the gateway for ``routes_path`` (validated now: a bad file fails fast).

    Tracing comes from the ``OTEL_*`` environment unless given (tests pass one with an
    in-memory exporter). With metrics, the access log and tracing all off, the
    observability middleware is not installed at all (``/metrics`` is then 404): the
    baseline the overhead benchmark compares against. With ``grpc`` the KServe gRPC
    edge serves beside HTTP, on the same loop and the same :class:`Runtime`."""
    runtime = Runtime(
        routes_path,
        watch=watch,
        access_log=access_log,
        access_log_flush_s=access_log_flush_s,
        metrics=metrics,
        tracing=tracing,
    )
    token = admin_token if admin_token is not None else os.environ.get("ROUTER_ADMIN_TOKEN")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        edge = None
        try:
            if grpc is not None:
                edge = GrpcEdge(runtime.gateway, runtime.recorder, runtime.tracing, grpc)
                await edge.start()
                app.state.grpc_port = edge.port
            yield
        finally:
            try:
                if edge is not None:
                    await edge.stop()
            finally:  # the runtime closes (and writes its access log) whatever the edge did
                await runtime.stop()

    observer = Observer(runtime.metrics, runtime.tracing, runtime.access_log)
    middleware = [Middleware(RequestIdMiddleware)]
    if observer.on:
        middleware.append(Middleware(ObserveMiddleware, observer=observer))
    routes = _routes()
    app = GatewayApp(
        lane=ImageLane(_lanes(routes), observer),  # ahead of the stack: ids and signals as any request
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.gateway = runtime.gateway
    app.state.reloader = runtime.reloader
    app.state.admin_token = token or None
    app.state.sign_ins = SignInThrottle()
    app.state.metrics = runtime.metrics
    app.state.grpc_port = None
    return app
