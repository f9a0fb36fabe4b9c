"""A hosted tier's readiness, fields and bounds against real processes.

Readiness is asked of the upstream, never assumed: with Triton unreachable and the
hosted upstream (tests/hosted_upstream.py) up, the gateway is ready and the repository
index says ``READY``; with the upstream stopped too, ``/readyz`` is 503, gRPC health is
``NOT_SERVING`` and the index says ``UNAVAILABLE``. ``seed`` and ``steps`` reach an
upstream whose backend ``accepts:`` them, and are refused by name (400, ``field``) by
one that does not. An upstream answer over the client's body bound is cut off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from image_router.backends._http1 import AnswerTooLarge, Http1Pool
from image_router.triton.launcher import free_port
from tests.procs import GatewayProcess, HostedUpstream

pytestmark = pytest.mark.integration

ROUTES = """
backends:
  triton: {url: "http://127.0.0.1:{DEAD}"}
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "sk-test"}
  seeded: {type: openai, base_url: "${HOSTED_URL}", api_key: "sk-test", accepts: [seed, steps]}
models:
  local: {backend: triton, latency_hint_ms: 100}
  remote: {backend: hosted, remote_model: img-1, latency_hint_ms: 100}
  remote-seeded: {backend: seeded, remote_model: img-1, latency_hint_ms: 100}
default_route: {model: remote, budget_ms: 3000, fallback: [local]}
env: [HOSTED_URL]
"""


def grpc_health(gw: GatewayProcess) -> int:
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        return status


def index(gw: GatewayProcess) -> dict[str, str]:
    return {e["name"]: e["state"] for e in httpx.post(gw.url + "/v2/repository/index", timeout=10).json()}


def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


Hosted = tuple[HostedUpstream, Callable[[], GatewayProcess]]


@pytest.fixture()
def hosted(tmp_path: Path) -> Iterator[Hosted]:
    upstream = HostedUpstream(tmp_path)
    started: list[GatewayProcess] = []

    def start() -> GatewayProcess:
        routes = tmp_path / "routes.yaml"
        routes.write_text(ROUTES.replace("{DEAD}", str(free_port())))
        gw = GatewayProcess(routes, "http://127.0.0.1:9", tmp_path / "gateway.log", env={"HOSTED_URL": upstream.url})
        started.append(gw)
        return gw

    yield upstream, start
    for gw in started:
        gw.stop()
    upstream.stop()


def test_ready_only_while_the_hosted_upstream_answers(
    hosted: tuple[HostedUpstream, Callable[[], GatewayProcess]],
) -> None:
    upstream, start = hosted
    gw = start()
    until(lambda: httpx.get(gw.url + "/readyz").status_code == 200)
    until(lambda: grpc_health(gw) == health_pb2.HealthCheckResponse.SERVING)
    states = index(gw)
    assert states["remote"] == "READY" and states["local"] == "UNAVAILABLE", states
    upstream.stop()  # now nothing can answer: Triton was never there
    until(lambda: httpx.get(gw.url + "/readyz").status_code == 503)
    until(lambda: grpc_health(gw) == health_pb2.HealthCheckResponse.NOT_SERVING)
    assert httpx.get(gw.url + "/v2/health/ready").status_code == 503
    assert set(index(gw).values()) == {"UNAVAILABLE"}
    status = httpx.get(gw.url + "/admin/status.json", headers=gw.admin).json()
    assert [e["healthy"] for e in status["backends"]["hosted"]] == [False]  # the status page says so too


def test_seed_and_steps_pass_where_accepted_and_are_refused_by_name_elsewhere(hosted: Hosted) -> None:
    upstream, start = hosted
    gw = start()
    url = gw.url + "/v1/images/generations"
    for field, extra in (("seed", {"seed": 7}), ("steps", {"steps": 4})):
        r = httpx.post(url, json={"prompt": "a kite", "model": "remote", **extra}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
    r = httpx.post(url, json={"prompt": "a kite", "model": "remote"}, timeout=30)
    assert r.status_code == 200, r.text  # seeds the gateway draws itself are not the client's
    assert "seed" not in upstream.last_request()
    r = httpx.post(url, json={"prompt": "a kite", "model": "remote-seeded", "seed": 7, "steps": 4}, timeout=30)
    assert r.status_code == 200, r.text
    sent = upstream.last_request()
    assert sent["seed"] == 7 and sent["steps"] == 4, sent


def test_an_answer_over_the_bound_is_cut_off_while_it_arrives() -> None:
    async def main() -> None:
        sent = 0

        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            try:
                while sent < 1_000_000_000:
                    writer.write(b"x" * 65536)
                    sent += 65536
                    await writer.drain()
            except ConnectionError:
                pass

        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Http1Pool("127.0.0.1", port, max_body_bytes=1 << 20)
        with pytest.raises(AnswerTooLarge):
            await asyncio.wait_for(pool.request("/v1/images/generations", b"{}", {}), 10)
        await asyncio.sleep(0.2)
        assert sent < 16 << 20, sent  # the gateway stopped reading near the bound
        server.close()

    asyncio.run(main())


def test_grpc_health_turns_not_serving_on_shutdown(hosted: Hosted) -> None:
    """A client watching the health service sees NOT_SERVING when the gateway is told to
    stop, before its calls are drained."""
    import signal
    import threading

    _, start = hosted
    gw = start()
    seen: list[int] = []
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)

        def follow() -> None:
            try:
                for answer in stream:
                    seen.append(answer.status)
            except grpc.RpcError:
                pass  # the server went away after saying so

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        until(lambda: health_pb2.HealthCheckResponse.SERVING in seen)
        gw.signal(signal.SIGTERM)
        follower.join(20)
    assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, seen
