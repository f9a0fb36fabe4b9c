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


@pytest.fixture()
def replicas(tmp_path: Path) -> Iterator[list[TritonServer]]:
    """Two Triton replicas with `noop` and `draft`, started side by side."""
    servers, logs = [], []
    for i in range(2):
        log = open(tmp_path / f"replica{i}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        servers.append(TritonServer(TritonConfig(MODEL_REPOSITORY, ["noop", "draft"]), log))
    try:
        for server in servers:
            server.start()
        for i, server in enumerate(servers):
            try:
                server.wait_ready(120)
            except Exception:  # noqa: BLE001 - show why
                pytest.fail(f"replica {i} did not start:\n{tail(tmp_path / f'replica{i}.log')}")
        yield servers
    finally:
        for server in servers:
            if server.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signal.SIGCONT)
            server.stop(timeout_s=10)
        for log in logs:
            log.close()
