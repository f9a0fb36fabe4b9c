"""``router serve --workers 2`` (image_router/workers.py) on the session's Triton: two
processes answer on one port, ``/metrics`` on either counts both, identical requests
spread over both are one generation, SIGHUP makes each reload (none is replaced),
SIGTERM stops them all, and a worker that cannot start ends the command with exit 3."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from image_router.triton import TritonServer
from tests.integration.test_cache import cached_routes, inferences
from tests.procs import GatewayProcess, free_ports, proc_stat, scrape

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(entry)
            if fields and int(fields[1]) == pid:
                found.add(int(entry))
    return found


def requests_total(gw: GatewayProcess) -> float:
    return sum(v for (name, _), v in scrape(gw).items() if name == "router_requests_total")


def test_two_workers_share_the_port_the_counts_and_the_cache_and_stop_together(
    start_gateway: Callable[..., GatewayProcess], triton: TritonServer, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    routes = cached_routes(f"disk://{tmp_path / 'cache'}").replace("ttl_s: 600}", "ttl_s: 600, timeout_ms: 250}")
    (metrics / "counter_1.db").write_bytes(b"a stale file of an earlier run")  # removed at start
    extra = ["--workers", "2", "--no-watch"]  # reloads by SIGHUP only
    gw = start_gateway(routes, extra=extra, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)})

    sent = 0
    deadline = time.monotonic() + 30
    while len({p.name.split("_")[-1] for p in metrics.glob("counter_*.db")}) < 2:  # both workers have answered
        assert time.monotonic() < deadline, f"one worker answered everything: {list(metrics.iterdir())}"
        with httpx.Client() as fresh:  # a new connection each time: the kernel picks the worker
            r = fresh.post(gw.url + "/api/v1/generate", json={"prompt": f"thumb of a kite {sent}", "seed": 1})
        assert r.status_code == 200, r.text
        sent += 1
    assert len(children(gw.process.pid)) >= 2
    assert not (metrics / "counter_1.db").exists()
    totals = {requests_total(gw) for _ in range(6)}  # scrapes answered by either worker
    assert totals == {float(sent)}, (totals, sent)

    before = inferences(triton, "preview")

    async def burst() -> list[httpx.Response]:
        async def one() -> httpx.Response:
            async with httpx.AsyncClient(timeout=60) as client:  # one connection per request
                return await client.post(gw.url + "/api/v1/generate", json={"prompt": "slowly drawn kite", "seed": 5})

        return await asyncio.gather(*(one() for _ in range(16)))

    answers = asyncio.run(burst())
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert inferences(triton, "preview") == before + 1, "identical requests on two workers: one generation"

    workers = children(gw.process.pid)
    gw.routes.write_text(gw.routes.read_text() + "\n# changed\n")
    gw.signal(signal.SIGHUP)  # uvicorn's own supervisor would replace the workers instead

    def reloads() -> float:
        return scrape(gw).get(("router_config_reloads_total", (("result", "success"),)), 0.0)

    deadline = time.monotonic() + 20
    while reloads() < 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the other worker's reload, had it been sent one
    reloaded = [reloads() for _ in range(16)]  # either worker answers each (1 in 2**16 that one answers all)
    assert reloaded == [1.0] * 16, f"every scrape (either worker) counts one reload: {reloaded}"
    assert children(gw.process.pid) == workers, "SIGHUP reloads the workers, it does not replace them"

    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(30) == 0
    deadline = time.monotonic() + 10  # the workers (and multiprocessing's resource tracker) end with it
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "no worker outlives the parent"


def _serve_two(triton: TritonServer, tmp_path: Path, grpc_port: int, **env: str) -> subprocess.CompletedProcess[str]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(cached_routes(f"disk://{tmp_path / 'cache'}"))
    cmd = [sys.executable, "-m", "image_router.cli", "serve", "--routes", str(routes), "--workers", "2"]
    cmd += ["--port", str(free_ports(1)[0]), "--grpc-port", str(grpc_port), "--log-level", "warning"]
    environ = {**os.environ, "TRITON_URL": triton.http_url, "ROUTER_STATE_DIR": str(tmp_path / "state"), **env}
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=60)


def test_a_worker_that_cannot_start_ends_the_command_with_exit_3(triton: TritonServer, tmp_path: Path) -> None:
    (grpc_port,) = free_ports(1)
    with socket.socket() as taken:  # the gRPC port held without SO_REUSEPORT: no worker can bind it
        taken.bind(("127.0.0.1", grpc_port))
        taken.listen()
        done = _serve_two(triton, tmp_path, grpc_port)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])


def test_a_metrics_directory_holding_another_programs_files_is_refused(triton: TritonServer, tmp_path: Path) -> None:
    """prometheus_client reads every ``*.db`` there as its own (a state store's file made
    ``/metrics`` a 500), and a file not of its names is not the gateway's to remove."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "state.db").write_bytes(b"a state store's file")
    done = _serve_two(triton, tmp_path, free_ports(1)[0], PROMETHEUS_MULTIPROC_DIR=str(metrics))
    assert done.returncode == 2 and "state.db" in done.stderr, (done.returncode, done.stderr[-2000:])
    assert (metrics / "state.db").read_bytes() == b"a state store's file"
