"""``router serve --workers N``: N gateway processes on one machine, one port.

One gateway process uses one core (measured: at 32 clients it is the bottleneck, one
core saturated; docs/benchmarks.md). Several processes are run the way uvicorn runs
them — its own supervisor, :class:`uvicorn.supervisors.Multiprocess`: the parent binds
the HTTP socket once and hands it to N spawned workers, restarts a worker that dies,
replaces them all on ``SIGHUP`` and stops them on ``SIGTERM``/``SIGINT``. Each worker
builds its own app from the same arguments (:class:`WorkerConfig`), so it is a
complete gateway; the gRPC port is bound by every worker with ``SO_REUSEPORT`` (gRPC's
default on Linux), and the kernel spreads connections over them.

N workers behave as one gateway because what must be shared is not in a process:

* tenants' limits and budgets, rollouts, jobs and the usage ledger live in the state
  store (SQLite in one file by default: every worker opens the same one);
* the result cache's store is shared, and with more than one worker its leases are
  taken there too (``ROUTER_WORKERS``: :func:`image_router.cache.store.shares_store`), so an identical request on
  two workers is one generation, as on two replicas;
* counters and histograms go to Prometheus' multiprocess files
  (``PROMETHEUS_MULTIPROC_DIR``, a fresh directory unless set), so ``/metrics`` on any
  worker counts every worker's requests.

What stays per worker, as it does per replica: the forecast lanes (each learns from
its own answers; Triton's queue holds every worker's requests, which its samples
include), a model's ``max_concurrency`` admission gate (set it per worker), the
memory layer of the cache (entries re-read from the store every 5 s, so a purge
reaches every worker within 5 s), the state-derived gauges of ``/metrics`` (the
answering worker's), and ``POST /admin/jobs/drain`` without ``?scope=cluster``. A
worker's access-log lines held for flushing are written at its shutdown, which the
supervisor waits for (no early flush on the signal, as the single process has).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from image_router.cache.store import WORKERS_ENV

__all__ = ["WorkerConfig", "run_workers"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _placeholder(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - replaced in load()
    raise RuntimeError("a worker's app is built in the worker")


class WorkerConfig(uvicorn.Config):
    """uvicorn's config, pickled to each spawned worker, where :meth:`load` builds the
    gateway from ``args`` (the app, its bounded HTTP protocol: neither crosses a process
    boundary)."""

    def __init__(self, args: argparse.Namespace, build: Callable[[argparse.Namespace], Any], **kwargs: Any) -> None:
        self.args = args
        self.build = build  # a module-level function: pickled by reference
        super().__init__(_placeholder, **kwargs)

    def load(self) -> None:
        if not self.loaded:
            from image_router.serving import bounded_protocol

            self.app = self.build(self.args)
            self.http = bounded_protocol(self.args.max_head_bytes, self.args.head_timeout)
        super().load()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def run_workers(args: argparse.Namespace, build: Callable[[argparse.Namespace], Any], **config: Any) -> None:
    """Serve ``args`` with ``args.workers`` processes until a stop signal."""
    if not args.no_grpc and args.grpc_port == 0:  # every worker must bind the same one
        args.grpc_port = _free_port(args.host)
    os.environ[WORKERS_ENV] = str(args.workers)
    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="router-metrics-")
    settings = WorkerConfig(args, build, workers=args.workers, **config)
    sock = settings.bind_socket()
    try:
        Multiprocess(settings, sockets=[sock]).run()
    finally:
        sock.close()
