"""What one gateway process runs, whichever servers face its clients.

The gateway (data plane), the ``routes.yaml`` reloader with its file watcher and
``SIGHUP`` handler, metrics, the access log and tracing belong to the process, not to
the HTTP server: the HTTP app (:mod:`image_router.app`) and the gRPC edge
(:mod:`image_router.rpc`) are both handed this one :class:`Runtime`, and its
:meth:`~Runtime.start` and :meth:`~Runtime.stop` run once, around both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from image_router.billing.reconcile import Reconciler, read
from image_router.config import load_file
from image_router.gateway import Gateway
from image_router.http.encode import shutdown_processes
from image_router.http.formats import encode_image
from image_router.jobs.runner import JobRunner
from image_router.reload import RoutesReloader
from image_router.telemetry import AccessLog, Metrics, Tracing
from image_router.telemetry.requests import Recorder

__all__ = ["CLOSE_S", "Runtime"]

log = logging.getLogger("router.runtime")

CLOSE_S = 8.0  # the most one part of the process may take to close at shutdown


class Runtime:
    def __init__(
        self,
        routes_path: str | Path,
        *,
        watch: bool = True,
        access_log: bool = True,
        access_log_flush_s: float = 1.0,
        metrics: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        """Validates ``routes_path`` now: a bad file fails fast, before any server."""
        path = Path(routes_path)
        self.watch = watch
        self.tracing = Tracing.from_env() if tracing is None else tracing
        self.metrics = Metrics() if metrics else None
        self.access_log = AccessLog(flush_interval_s=access_log_flush_s) if access_log else None
        self.recorder = Recorder(self.metrics, self.access_log)
        self.gateway = Gateway(load_file(path), metrics=self.metrics, tracing=self.tracing)
        self.reloader = RoutesReloader(path, self.gateway.swap, self.gateway.table)
        self.jobs = JobRunner(self.gateway, encode_image, recorder=self.recorder)  # idle until a jobs: block
        gateway = self.gateway  # Triton's statistics, read from start when billing is on (reconciliation)
        self.reconciler = Reconciler(
            lambda: read(gateway.pool.items(), gateway.table, gateway.budgets.tally, time.monotonic)
        )
        if self.metrics is not None:
            access = self.access_log
            self.metrics.watch(
                lambda: {
                    **self.gateway.state(),
                    "reloads": self.reloader.counts,
                    "jobs": self.jobs.describe(),
                    "billing": self.gateway.budgets.describe(self.gateway.table),
                    "access_log_dropped": access.dropped if access is not None else 0,
                }
            )
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The file watcher and the ``SIGHUP`` handler, on the running loop."""
        if self.watch:
            self._watcher = asyncio.create_task(self.reloader.watch(self._stop))
        self.gateway.rollouts.start()
        self.gateway.coordinator.warm(self.gateway.table.models.values())
        self.jobs.start()
        if self.gateway.table.billing is not None:  # else from the first /admin/billing/reconcile
            self.reconciler.start()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reloader.reload)

    async def stop(self) -> None:
        """After the servers stopped taking requests: close clients, flush signals."""
        self._stop.set()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.access_log is not None:  # first: what was served is written whatever hangs below
            self.access_log.flush()
        try:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher
            closes = (self.jobs.aclose, self.reconciler.aclose, self.gateway.aclose)
            for name, close in zip(("jobs", "reconciler", "gateway"), closes, strict=True):
                try:  # bounded: Kubernetes kills a pod that outlives its grace period
                    async with asyncio.timeout(CLOSE_S):
                        await close()
                except Exception as exc:  # noqa: BLE001 - the rest still closes
                    log.error("shutdown: closing the %s failed: %s: %s", name, type(exc).__name__, exc)
            shutdown_processes()
            self.tracing.shutdown()
        finally:
            if self.access_log is not None:  # lines of requests the closes ended (jobs handed back)
                self.access_log.flush()
