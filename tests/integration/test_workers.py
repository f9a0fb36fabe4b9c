"""``router serve --workers 2`` (image_router/workers.py) on the session's Triton: two
processes answer on one port, ``/metrics`` on either counts both, identical requests
spread over both are one generation, and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from image_router.triton import TritonServer
from tests.integration.test_cache import cached_routes, inferences
from tests.procs import GatewayProcess, scrape

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
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
    gw = start_gateway(routes, extra=["--workers", "2"], env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)})

    sent = 0
    deadline = time.monotonic() + 30
    while len({p.name.split("_")[-1] for p in metrics.glob("counter_*.db")}) < 2:  # both workers have answered
        assert time.monotonic() < deadline, f"one worker answered everything: {list(metrics.iterdir())}"
        with httpx.Client() as fresh:  # a new connection each time: the kernel picks the worker
            r = fresh.post(gw.url + "/api/v1/generate", json={"prompt": f"thumb of a kite {sent}", "seed": 1})
        assert r.status_code == 200, r.text
        sent += 1
    assert len(children(gw.process.pid)) >= 2
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
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(30) == 0
    deadline = time.monotonic() + 10  # the workers (and multiprocessing's resource tracker) end with it
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "no worker outlives the parent"
