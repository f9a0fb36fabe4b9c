"""The hot-path HTTP/1.1 client against a scripted loopback server: keep-alive reuse,
the one safe resend on a stale connection, and failures that must not be resent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from image_router.backends._http1 import Http1Pool

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int, list[int]]:
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await handler(reader, writer, len(connections))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    return await reader.readexactly(length)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Thing: 1\r\n\r\n%s" % (len(body), body)


async def test_keep_alive_connection_is_reused() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(ok(body[::-1]))
            await writer.drain()

    server, port, connections = await serve(echo)
    pool = Http1Pool("127.0.0.1", port)
    for i in range(5):
        response = await pool.request("/x", b"abc%d" % i, {})
        assert response.status == 200 and response.body == b"%dcba" % i
        assert response.headers["x-thing"] == "1"
    assert len(connections) == 1
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_stale_keep_alive_connection_is_resent_once_on_a_fresh_one() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(b"first" if n == 1 else b"again"))
        await writer.drain()
        if n == 1:
            await reader.read(1)  # the next request arrives: close without answering
            writer.close()
        else:
            await reader.read()  # until the client closes

    server, port, connections = await serve(one_then_close)
    pool = Http1Pool("127.0.0.1", port)
    assert (await pool.request("/", b"1", {})).body == b"first"
    assert (await pool.request("/", b"2", {})).body == b"again"
    assert len(connections) == 2
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_close_mid_response_is_an_error_not_a_resend() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    server, port, connections = await serve(half)
    pool = Http1Pool("127.0.0.1", port)
    with pytest.raises(ConnectionResetError):
        await pool.request("/", b"x", {})
    assert len(connections) == 1
    server.close()
    await server.wait_closed()


async def test_garbage_response_and_refused_connection_raise_oserrors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    server, port, _ = await serve(garbage)
    pool = Http1Pool("127.0.0.1", port)
    with pytest.raises(ConnectionError, match="malformed"):
        await pool.request("/", b"x", {})
    await pool.aclose()
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await Http1Pool("127.0.0.1", port).request("/", b"x", {})


async def test_cancelled_request_drops_its_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client drops the connection

    server, port, _ = await serve(slow)
    pool = Http1Pool("127.0.0.1", port)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.request("/", b"x", {})
    assert pool._take_idle() is None
    server.close()
    await server.wait_closed()


async def test_the_queue_timeout_and_priority_reach_triton_on_the_wire() -> None:
    """What the gateway promises Triton — the time the budget leaves as the request's
    queue ``timeout`` (µs), the route's priority level, and a model's pinned version in
    the path — read off the wire by a scripted upstream that answers like Triton."""
    import json

    import numpy as np

    from image_router.backends.base import ImageRequest
    from image_router.config import compile_text
    from image_router.gateway import Gateway
    from image_router.kserve import encode_response
    from image_router.policy.match import RequestFacts

    seen: list[dict[str, object]] = []
    paths: list[bytes] = []

    async def triton(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            paths.append(head.split(b" ")[1])
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            fields = {k.lower(): v for k, v in fields.items()}
            body = await reader.readexactly(int(fields[b"content-length"]))
            seen.append(json.loads(body[: int(fields[b"inference-header-content-length"])]))
            image = np.zeros((1, 8, 8, 3), np.uint8)
            payload, size = encode_response("noop", "1", None, "IMAGE", image, binary=True)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s" % (size, len(payload), payload)
            )
            await writer.drain()

    server, port, _ = await serve(triton)
    routes = f"""
backends: {{triton: {{url: "http://127.0.0.1:{port}"}}}}
models:
  noop: {{backend: triton, latency_hint_ms: 10}}
  noop-v2: {{backend: triton, triton_model: noop, version: "2", latency_hint_ms: 10}}
routes:
  - {{name: urgent, match: urgent, model: noop, budget_ms: 750, priority: 1}}
default_route: {{model: noop, budget_ms: 2000}}
"""
    gateway = Gateway(compile_text(routes, env={}))
    try:
        await gateway.generate(RequestFacts("x", intent="urgent"), ImageRequest(("x",)))
        await gateway.generate(RequestFacts("x"), ImageRequest(("x",)), priority=3)
        await gateway.generate(RequestFacts("x", model="noop-v2"), ImageRequest(("x",)))
    finally:
        await gateway.aclose()
        server.close()
    assert paths == [b"/v2/models/noop/infer", b"/v2/models/noop/infer", b"/v2/models/noop/versions/2/infer"]
    urgent, default, _ = (s["parameters"] for s in seen)
    assert isinstance(urgent, dict) and isinstance(default, dict)
    assert 700_000 <= urgent["timeout"] <= 750_000 and urgent["priority"] == 1
    assert 1_950_000 <= default["timeout"] <= 2_000_000 and default["priority"] == 3  # X-Priority


@pytest.mark.parametrize(("ratio", "calls"), [(0.0, 10 + 3), (1.0, 10 + 10)])
async def test_the_retry_budget_caps_retries_of_a_full_queue(ratio: float, calls: int) -> None:
    """Triton's "queue full" 503 cannot have been processed, so it is retried (up to
    twice here) — but only within the retry budget: at ratio 0 the floor of 3 retries is
    all 10 failing requests may spend together; at ratio 1, one retry per request. Every
    unit of budget spent is a retry sent (this once spent one more per request)."""
    from image_router.backends.base import ImageRequest
    from image_router.backends.triton import TritonBackend
    from image_router.config import compile_text
    from image_router.errors import BackendUnavailable

    hits: list[int] = []

    async def full(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            hits.append(n)
            body = b'{"error":"Exceeds maximum queue size"}'
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server, port, _ = await serve(full)
    table = compile_text(
        f"""
backends:
  triton:
    url: "http://127.0.0.1:{port}"
    retry: {{attempts: 2, backoff_ms: 1, max_backoff_ms: 2, budget_ratio: {ratio}}}
default_route: {{model: noop, budget_ms: 5000}}
""",
        env={},
    )
    backend = TritonBackend(table.backends["triton"])
    try:
        for _ in range(10):
            with pytest.raises(BackendUnavailable):
                await backend.generate(table.models["noop"], ImageRequest(("x",)), timeout_s=5.0)
    finally:
        await backend.aclose()
        server.close()
    assert len(hits) == calls and backend.retries == calls - 10
