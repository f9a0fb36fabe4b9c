"""Shared fixtures: one real Triton server per test session, gateways per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.triton import TritonConfig, TritonServer
from tests.procs import MODEL_REPOSITORY, GatewayProcess, tail


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The project's own model_repository/ served by a real tritonserver (all four models)."""
    log_path = tmp_path_factory.mktemp("triton") / "triton.log"
    with open(log_path, "wb") as log:
        server = TritonServer(TritonConfig(MODEL_REPOSITORY), log=log)
        server.start()
        try:
            server.wait_ready(timeout_s=300)
        except Exception:  # noqa: BLE001 - any startup failure: show Triton's log
            server.stop()
            pytest.fail(f"Triton did not start:\n{tail(log_path)}")
        yield server
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
