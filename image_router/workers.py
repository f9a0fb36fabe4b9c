"""``router serve --workers N``: N gateway processes on one machine, one port.

One gateway process uses one core (measured: at 32 clients it is the bottleneck, one
core saturated; docs/benchmarks.md). Several processes are run the way uvicorn runs
them — its own supervisor, :class:`uvicorn.supervisors.Multiprocess`: the parent binds
the HTTP socket once and hands it to N spawned workers, restarts a worker that dies
and stops them on ``SIGTERM``/``SIGINT``. Each worker
builds its own app from the same arguments (:class:`WorkerConfig`), so it is a
complete gateway; the gRPC port is bound by every worker with ``SO_REUSEPORT`` (gRPC's
default on Linux), and the kernel spreads connections over them. Two departures from
uvicorn's supervisor (:class:`Supervisor`): ``SIGHUP`` is passed to every worker, which
reloads its routes as a single gateway does (uvicorn would replace the workers, dropping
their learnt forecasts and open streams; a worker still starting ignores it, and reads
the file as it starts anyway), and a worker that fails to start makes the whole
command exit 3, as a single process does (uvicorn exits 0).

N workers behave as one gateway because what must be shared is not in a process:

* tenants' limits and budgets, rollouts, jobs and the usage ledger live in the state
  store (SQLite in one file by default: every worker opens the same one);
* the result cache's store is shared, and with more than one worker its leases are
  taken there too (``ROUTER_WORKERS``: :func:`image_router.cache.store.shares_store`),
  so an identical request on two workers is one generation, as on two replicas;
* counters and histograms go to Prometheus' multiprocess files
  (``PROMETHEUS_MULTIPROC_DIR``: a fresh directory, removed at the end, unless set; in
  a directory the operator sets, the client library's files — ``counter_<pid>.db`` and
  the like — are removed at start, as the library asks, so a restart does not add the
  last run's counts, and any other ``*.db`` there is refused with exit 2: the library
  would read it as its own), and ``/metrics`` on any worker counts every worker's
  requests.

What stays per worker, as it does per replica: the forecast lanes (each learns from
its own answers; Triton's queue holds every worker's requests, which its samples
include), a model's ``max_concurrency`` admission gate (set it per worker), the
memory layer of the cache (entries re-read from the store every 5 s, so a purge
reaches every worker within 5 s), the state-derived gauges of ``/metrics`` (the
answering worker's), and ``POST /admin/jobs/drain`` without ``?scope=cluster``. Each
worker writes its own access-log lines to the shared standard output, at most 4 KiB per
write and only whole lines (:class:`image_router.telemetry.access_log.AccessLog`), so
on a pipe two workers' lines never interleave (a single line over 4 KiB may); held
lines are written the moment the stop signal arrives, as in one process.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from image_router.cache.store import WORKERS_ENV
from image_router.serving import FlushingConfig

__all__ = ["Supervisor", "WorkerConfig", "run_workers"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("uvicorn.error")

Build = Callable[[argparse.Namespace], tuple[Any, Callable[[], None] | None]]


def _placeholder(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - replaced in load()
    raise RuntimeError("a worker's app is built in the worker")


class WorkerConfig(FlushingConfig):
    """uvicorn's config, pickled to each spawned worker, where :meth:`load` builds the
    gateway from ``args`` (the app, its bounded HTTP protocol and what to flush on a stop
    signal: none of them crosses a process boundary)."""

    def __init__(self, args: argparse.Namespace, build: Build, **kwargs: Any) -> None:
        self.args = args
        self.build = build  # a module-level function: pickled by reference
        super().__init__(_placeholder, None, **kwargs)

    def load(self) -> None:
        if not self.loaded:
            from image_router.serving import bounded_protocol

            # a SIGHUP passed on before the runtime takes it (Runtime.start) must not end
            # the worker (its default action): it reads the routes file as it starts anyway
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            self.app, self.on_stop = self.build(self.args)
            self.http = bounded_protocol(self.args.max_head_bytes, self.args.head_timeout)
        super().load()


class Supervisor(Multiprocess):
    """uvicorn's supervisor, with ``SIGHUP`` passed on to the workers (each reloads)."""

    def handle_hup(self) -> None:
        log.info("Received SIGHUP, passing it to the workers (each reloads its routes).")
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)

    def failed_to_start(self) -> bool:
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)


_LIBRARY_FILE = re.compile(r"(counter|gauge_\w+|histogram|summary)_\d+\.db")  # prometheus_client's names


def _metrics_dir() -> str | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the workers; the directory to remove at the end."""
    named = os.environ.get(MULTIPROC_ENV)
    if named:
        files = list(Path(named).glob("*.db"))
        foreign = sorted(f.name for f in files if not _LIBRARY_FILE.fullmatch(f.name))
        if foreign:  # the library reads every *.db there: another's file breaks /metrics, and is not ours to remove
            print(
                f"router serve: {MULTIPROC_ENV}={named} holds {', '.join(foreign[:3])}, not prometheus_client's "
                "files: give the metrics a directory of their own",
                file=sys.stderr,
            )
            raise SystemExit(2)
        for stale in files:  # the last run's counts
            stale.unlink(missing_ok=True)
        return None
    os.environ[MULTIPROC_ENV] = made = tempfile.mkdtemp(prefix="router-metrics-")
    return made


def run_workers(
    args: argparse.Namespace, build: Build, on_bound: Callable[[int], None] | None = None, **config: Any
) -> None:
    """Serve ``args`` with ``args.workers`` processes until a stop signal; exit 3 if a
    worker failed to start (as one process that cannot start does). A gRPC port must be
    named: every worker binds the same one. ``on_bound`` hears the HTTP port once it is
    bound (``--port 0``: the one taken)."""
    if not args.no_grpc and args.grpc_port == 0:
        raise ValueError("workers need a gRPC port chosen before they start")
    os.environ[WORKERS_ENV] = str(args.workers)
    settings = WorkerConfig(args, build, workers=args.workers, **config)
    sock = settings.bind_socket()  # exits 3 if the port is taken: before anything is made
    if on_bound is not None:
        on_bound(sock.getsockname()[1])
    made = _metrics_dir()
    try:
        supervisor = Supervisor(settings, sockets=[sock])
        supervisor.run()
    finally:
        sock.close()
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    if supervisor.failed_to_start():
        raise SystemExit(3)
