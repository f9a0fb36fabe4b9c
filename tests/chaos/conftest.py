"""Chaos scenarios: real gateways and real Triton servers, faults injected for real.

Every scenario records what happened to each request; the session ends with a
Markdown table of the counts (the one in docs/resilience.md), printed by
``pytest tests/chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import httpx
import pytest

from image_router.triton import TritonConfig, TritonServer
from tests.procs import MODEL_REPOSITORY, tail

MARGIN_S = 0.3  # HTTP and scheduling on a busy 2-core machine


@dataclass
class Tally:
    scenario: str
    budget_s: float
    sent: int = 0
    answered: int = 0
    downgraded: int = 0
    refused: int = 0
    errors: int = 0
    over_budget: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    worst_s: float = 0.0
    refusals: list[str] = field(default_factory=list)  # the first few bodies of each status, for failure messages
    shed: int = 0  # 429s
    shed_without_retry_after: int = 0
    shed_worst_s: float = 0.0  # the slowest 429: shedding must be immediate
    served_by: dict[str, int] = field(default_factory=dict)  # X-Router-Model of the 200s

    def count(self, status: int, headers: Mapping[str, str], elapsed: float, text: Callable[[], str]) -> None:
        """Count one answer (``headers`` with lower-case names)."""
        self.worst_s = max(self.worst_s, elapsed)
        if elapsed > self.budget_s + MARGIN_S:
            self.over_budget += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.answered += 1
            served = headers.get("x-router-model", "?")
            self.served_by[served] = self.served_by.get(served, 0) + 1
            if "x-router-fallback" in headers:
                self.downgraded += 1
            return
        if status == 429:
            self.shed += 1
            self.shed_worst_s = max(self.shed_worst_s, elapsed)
            self.shed_without_retry_after += "retry-after" not in headers
        self.refused += 1
        if self.statuses[status] <= 5:
            self.refusals.append(f"{elapsed * 1000:.0f} ms {status} {text()[:600]}")

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.sent} | {self.answered} | {self.downgraded} | {self.refused} | "
            f"{self.errors} | {self.over_budget} | {self.worst_s * 1000:.0f} ms |"
        )


TALLIES: list[Tally] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLIES:
        return
    terminalreporter.write_sep("-", "chaos scenarios")
    terminalreporter.write_line(
        "| scenario | sent | answered | downgraded | refused (4xx/5xx) | errors | over budget | slowest |"
    )
    terminalreporter.write_line("|---|---|---|---|---|---|---|---|")
    for tally in TALLIES:
        terminalreporter.write_line(tally.row())


async def record(
    client: httpx.AsyncClient, tally: Tally, method: str, path: str, **kw: object
) -> httpx.Response | None:
    """Send one request and count what came back."""
    tally.sent += 1
    t0 = time.monotonic()
    try:
        response = await client.request(method, path, **kw)  # type: ignore[arg-type]
    except httpx.HTTPError:
        tally.errors += 1
        return None
    tally.count(response.status_code, response.headers, time.monotonic() - t0, lambda: response.text)
    return response


async def record_aio(
    session: aiohttp.ClientSession, tally: Tally, url: str, body: dict[str, object]
) -> tuple[int, dict[str, str], float] | None:
    """POST ``body`` with aiohttp and count what came back: its status, headers (lower-case
    names) and when it was read (monotonic), ``None`` on a connection error. For bursts:
    httpx's client costs ~9 ms of CPU per request at 300 at a time, so a burst through it
    measures the client (its last answers arrive 2.6 s late even from ``/healthz``);
    aiohttp's does the same burst in under 0.15 s."""
    tally.sent += 1
    t0 = time.monotonic()
    try:
        async with session.post(url, json=body) as response:
            content = await response.read()  # a PNG when answered
    except aiohttp.ClientError:
        tally.errors += 1
        return None
    done = time.monotonic()
    headers = {k.lower(): v for k, v in response.headers.items()}
    tally.count(response.status, headers, done - t0, lambda: content.decode("utf-8", "replace"))
    return response.status, headers, done


async def load(url: str, tally: Tally, body: dict[str, object], concurrency: int, duration_s: float) -> None:
    """``concurrency`` clients sending ``body`` back to back for ``duration_s``."""
    deadline = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await record(client, tally, "POST", "/api/v1/generate", json=body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def signal_group(server: TritonServer, signum: int) -> None:
    """Signal Triton and its model processes (its own process group)."""
    assert server.pid is not None
    os.killpg(server.pid, signum)


class ReplicaPool:
    """Two Triton replicas with `noop` and `draft`, shared by a module's scenarios (a
    start is 7-8 s): before each, a frozen one is resumed and a killed one replaced, so
    every scenario begins with two healthy replicas, as if started for it alone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[TritonServer] = []
        self.logs: list[IO[bytes]] = []
        self.log_of: dict[int, Path] = {}  # id(server) -> its log

    def _new(self, i: int) -> TritonServer:
        path = self.root / f"replica{i}-{len(self.logs)}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        server = TritonServer(TritonConfig(MODEL_REPOSITORY, ["noop", "draft"]), log)
        self.log_of[id(server)] = path
        return server

    def healthy(self) -> list[TritonServer]:
        fresh = []
        for i in range(2):
            server = self.servers[i] if i < len(self.servers) else None
            if server is not None and server.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGCONT)  # a frozen one: resumed
                if server.running():
                    server.wait_ready(60)  # and answering again before the next scenario
            if server is None or not server.running():
                if server is not None:
                    server.stop(timeout_s=3)
                server = self._new(i)
                server.start()
                fresh.append(server)
                if i < len(self.servers):
                    self.servers[i] = server
                else:
                    self.servers.append(server)
        for server in fresh:  # started side by side, waited for together
            try:
                server.wait_ready(120)
            except Exception:  # noqa: BLE001 - show why
                pytest.fail(f"a replica did not start:\n{tail(self.log_of[id(server)])}")
        return list(self.servers)

    def stop(self) -> None:
        for server in self.servers:
            if server.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGCONT)
            server.stop(timeout_s=3)  # the scenarios are over: no need to wait out a graceful unload
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def replica_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPool]:
    pool = ReplicaPool(tmp_path_factory.mktemp("replicas"))
    yield pool
    pool.stop()


@pytest.fixture()
def replicas(replica_pool: ReplicaPool) -> list[TritonServer]:
    """Two healthy Triton replicas with `noop` and `draft` (see :class:`ReplicaPool`)."""
    return replica_pool.healthy()
