"""Shared fixtures: one real Triton server per test session, gateways per test."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from image_router.triton import TritonServer
from tests.procs import MODEL_REPOSITORY, GatewayProcess, RedisProcess, serving
from tests.rollout_models import write_repository

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The project's own model_repository/ served by a real tritonserver (all four models)."""
    with serving(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton") / "triton.log") as server:
        yield server


@pytest.fixture(scope="session")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The rollout tests' sleep-timed variants (tests/rollout_models), one Triton for all
    of them: a start costs 20-40 s on this machine."""
    root = tmp_path_factory.mktemp("variants")
    with serving(write_repository(root / "repository"), root / "triton.log") as server:
        yield server


@pytest.fixture()
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, driven by Playwright (the status page's tests)."""
    from playwright.sync_api import sync_playwright

    from tests.integration.test_status_page import CHROMIUM, CHROMIUM_ARGS

    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed for this test: apt-get install chromium (make test does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real ``redis-server`` on an ephemeral port for one test."""
    server = RedisProcess(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture()
def state_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real ``redis-server`` run as a state store must be: ``noeviction`` (a store that
    may drop keys is refused). Resumed first if a test left it stopped (SIGSTOP)."""
    server = RedisProcess(tmp_path, policy="noeviction").start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture()
def start_gateway(triton: TritonServer, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start ``router serve`` on a routes file written from text; stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(
        routes_text: str,
        name: str = "routes.yaml",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> GatewayProcess:
        routes = tmp_path / name
        routes.write_text(routes_text)
        log = tmp_path / f"gateway{len(started)}.log"
        grpc = f"127.0.0.1:{triton.config.grpc_port}"
        gateway = GatewayProcess(routes, triton.http_url, log, extra, env, triton_grpc=grpc)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
