"""The access log writes JSON lines in batches: at its interval, when full, at once
outside an event loop or with interval 0, at shutdown whatever else fails — and never
loses a line it was given."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from image_router.app import create_app
from image_router.runtime import Runtime
from image_router.serving import flush_on_stop_signal
from image_router.telemetry import AccessLog, Tracing
from image_router.telemetry.access_log import ATOMIC_BYTES, chunks


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_wait_for_the_interval_inside_an_event_loop() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, flush_interval_s=0.05)

    async def scenario() -> tuple[int, int]:
        log.record({"request_id": "a", "status": 200})
        log.record({"request_id": "b", "status": 404})
        before = len(lines(stream))
        await asyncio.sleep(0.2)
        return before, len(lines(stream))

    before, after = asyncio.run(scenario())
    assert (before, after) == (0, 2)
    assert [line["request_id"] for line in lines(stream)] == ["a", "b"]


def test_a_full_buffer_is_written_at_once() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, flush_interval_s=60, max_lines=3)

    async def scenario() -> None:
        for i in range(7):
            log.record({"i": i})
        assert [line["i"] for line in lines(stream)] == [0, 1, 2, 3, 4, 5]
        log.flush()  # what the app's shutdown does

    asyncio.run(scenario())
    assert [line["i"] for line in lines(stream)] == list(range(7))


def test_interval_zero_or_no_event_loop_writes_every_line() -> None:
    unbuffered, outside = io.StringIO(), io.StringIO()

    async def scenario() -> None:
        AccessLog(unbuffered, flush_interval_s=0).record({"x": 1})

    asyncio.run(scenario())
    AccessLog(outside, flush_interval_s=1).record({"x": 2})
    assert lines(unbuffered) == [{"x": 1}] and lines(outside) == [{"x": 2}]


def test_a_broken_stream_drops_lines_without_raising() -> None:
    stream = io.StringIO()
    stream.close()
    log = AccessLog(stream, flush_interval_s=0)
    log.record({"x": 1})
    log.record({"x": 2})
    assert log.dropped == 2


def test_writes_hold_whole_lines_and_stay_within_one_atomic_pipe_write() -> None:
    lines = [b"x" * n for n in (10, 4000, 90, 4095, 5000, 1, 2000, 2000)]
    written = chunks(lines)
    assert b"".join(written) == b"".join(line + b"\n" for line in lines), "every line, in order"
    assert all(chunk.endswith(b"\n") for chunk in written), "no line split across writes"
    assert [len(c) for c in written] == [11 + 4001, 91, 4096, 5001, 2 + 2001 + 2001]
    assert all(len(c) <= ATOMIC_BYTES for c in written if c.count(b"\n") > 1), "only a lone long line is larger"


class Pipe(io.StringIO):
    """A text stream over a byte buffer, as a real stdout is: each binary write recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = self.Writes()

    class Writes:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> int:
            self.writes.append(data)
            return len(data)

        def flush(self) -> None:
            return None


def test_a_real_stdout_gets_bytes_in_atomic_writes() -> None:
    stream = Pipe()
    access = AccessLog(stream, flush_interval_s=60, max_lines=10_000)
    for i in range(200):
        access.record({"i": i, "pad": "é" * 40})  # 2 bytes a character: counted in bytes
    access.flush()
    writes = stream.buffer.writes
    assert len(writes) > 1 and all(len(w) <= ATOMIC_BYTES and w.endswith(b"\n") for w in writes)
    assert [json.loads(line)["i"] for w in writes for line in w.splitlines()] == list(range(200))


def test_a_stop_signal_writes_held_lines_at_once_after_the_servers_own_handler() -> None:
    """What ``router serve`` (one process or ``--workers``) chains to uvicorn's handler:
    the server's handler still runs, first, and the held lines are written on the loop
    without waiting for the shutdown; uvicorn puts its saved handlers back after."""
    order: list[str] = []
    stream = io.StringIO()
    access = AccessLog(stream, flush_interval_s=60)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def servers_own(signum: int, frame: object) -> None:
        order.append(f"server {signum}")

    def flush() -> None:
        order.append("flush")
        access.flush()

    async def main() -> None:
        access.record({"path": "/v1/images/generations"})
        for sig in saved:
            signal.signal(sig, servers_own)
        flush_on_stop_signal(flush)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and handler is not servers_own
        handler(signal.SIGTERM, None)
        assert order == [f"server {signal.SIGTERM}"] and not stream.getvalue(), "flushed on the loop, not here"
        await asyncio.sleep(0)
        assert order == [f"server {signal.SIGTERM}", "flush"]

    try:
        asyncio.run(main())
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert lines(stream) == [{"path": "/v1/images/generations"}]


def test_metrics_off_means_no_metrics_endpoint(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        'backends: {triton: {url: "http://127.0.0.1:9"}}\n'
        "models: {noop: {backend: triton, latency_hint_ms: 10}}\n"
        "default_route: {model: noop}\n"
    )
    off = create_app(routes, watch=False, metrics=False, access_log=False, tracing=Tracing.off())
    on = create_app(routes, watch=False, access_log=False, tracing=Tracing.off())
    answer = TestClient(off).get("/metrics")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert "router_requests" in TestClient(on).get("/metrics").text


def test_held_lines_are_written_at_shutdown_even_when_a_close_fails_or_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI once lost every held line at a graceful stop: the flush came last, after the
    closes. Now it comes first and again at the end; a close that raises is logged and a
    close that hangs is cut at CLOSE_S, and the process still stops."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        'backends: {triton: {url: "http://127.0.0.1:9"}}\n'
        "models: {noop: {backend: triton, latency_hint_ms: 10}}\n"
        "default_route: {model: noop}\n"
    )
    monkeypatch.setattr("image_router.runtime.CLOSE_S", 0.05)
    runtime = Runtime(routes, watch=False, access_log_flush_s=60, tracing=Tracing.off())
    stream = io.StringIO()
    assert runtime.access_log is not None
    runtime.access_log.stream = stream

    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def fails() -> None:
        raise ConnectionError("store gone")

    monkeypatch.setattr(runtime.jobs, "aclose", hangs)
    monkeypatch.setattr(runtime.gateway, "aclose", fails)

    async def scenario() -> float:
        await runtime.start()
        runtime.access_log.record({"request_id": "a", "status": 200})  # type: ignore[union-attr]
        t0 = time.monotonic()
        with contextlib.suppress(TimeoutError):  # a stop that hangs fails below, not forever
            await asyncio.wait_for(runtime.stop(), 5)
        return time.monotonic() - t0

    took = asyncio.run(scenario())
    assert [line["request_id"] for line in lines(stream)] == ["a"]
    assert took < 1.0
