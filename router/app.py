"""Assembling the Starlette application and its lifecycle.

``create_app`` wires config → gateway → reloader → HTTP routes. The lifespan starts
the file watcher and the ``SIGHUP`` handler and, on shutdown, stops them and closes
the backend clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.config import load_file
from router.errors import NotFound
from router.gateway import Gateway
from router.http import admin_api, image_files, images_api, kserve_api, status_page
from router.http.encode import shutdown_processes
from router.http.errors import RequestIdMiddleware, exception_handlers
from router.http.observe import ObserveMiddleware
from router.reload import RoutesReloader
from router.telemetry import AccessLog, Metrics, Tracing
from router.telemetry.metrics import CONTENT_TYPE

__all__ = ["create_app"]

log = logging.getLogger("router.app")


def _routes() -> list[Route]:
    k = kserve_api
    return [  # the hot path first: Starlette tries routes in order, ~1.5 µs each
        Route("/v2/models/{model}/infer", k.infer, methods=["POST"]),
        Route("/healthz", admin_api.healthz, methods=["GET"]),
        Route("/readyz", admin_api.readyz, methods=["GET"]),
        Route("/v1/images/generations", images_api.openai_images, methods=["POST"]),
        Route("/api/v1/generate", images_api.generate, methods=["POST"]),
        Route("/v1/images/{name}", image_files.image_file, methods=["GET", "HEAD"]),
        Route("/v2", k.server_metadata, methods=["GET"]),
        Route("/v2/health/live", k.live, methods=["GET"]),
        Route("/v2/health/ready", k.ready, methods=["GET"]),
        Route("/v2/repository/index", k.repository_index, methods=["POST"]),
        Route("/v2/models/{model}", k.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", k.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", k.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", k.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", k.infer, methods=["POST"]),
        Route("/admin/reload", admin_api.admin_reload, methods=["POST"]),
        Route("/admin/config", admin_api.admin_config, methods=["GET"]),
        Route("/admin/explain", admin_api.admin_explain, methods=["POST"]),
        Route("/admin/cache", admin_api.admin_cache, methods=["GET"]),
        Route("/admin/cache/purge", admin_api.admin_cache_purge, methods=["POST"]),
        Route("/admin/pregenerate", admin_api.admin_pregenerate, methods=["POST"]),
        Route("/admin/pregenerate", admin_api.admin_pregenerate_status, methods=["GET"]),
        Route("/admin/", status_page.status_page, methods=["GET"]),
        Route("/admin/status.json", status_page.status_json, methods=["GET"]),
        Route("/admin/login", status_page.login_form, methods=["GET"]),
        Route("/admin/login", status_page.login, methods=["POST"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]


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
) -> Starlette:
    """Build the gateway for ``routes_path`` (validated now: a bad file fails fast).

    Tracing comes from the ``OTEL_*`` environment unless given (tests pass one with an
    in-memory exporter). With metrics, the access log and tracing all off, the
    observability middleware is not installed at all (``/metrics`` is then 404): the
    baseline the overhead benchmark compares against."""
    path = Path(routes_path)
    tracing = Tracing.from_env() if tracing is None else tracing
    registry = Metrics() if metrics else None
    access = AccessLog(flush_interval_s=access_log_flush_s) if access_log else None
    gateway = Gateway(load_file(path), metrics=registry, tracing=tracing)
    reloader = RoutesReloader(path, gateway.swap, gateway.table)
    if registry is not None:
        registry.watch(
            lambda: {
                **gateway.state(),
                "reloads": reloader.counts,
                "access_log_dropped": access.dropped if access is not None else 0,
            }
        )
    token = admin_token if admin_token is not None else os.environ.get("ROUTER_ADMIN_TOKEN")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        watcher = asyncio.create_task(reloader.watch(stop)) if watch else None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, reloader.reload)
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await gateway.aclose()
            shutdown_processes()
            tracing.shutdown()
            if access is not None:
                access.flush()

    middleware = [Middleware(RequestIdMiddleware)]
    if registry is not None or access is not None or tracing.tracer is not None:
        middleware.append(Middleware(ObserveMiddleware, metrics=registry, tracing=tracing, access_log=access))
    app = Starlette(
        routes=_routes(),
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.reloader = reloader
    app.state.admin_token = token or None
    app.state.metrics = registry
    return app
