"""``router serve --log-format json``: a real gateway process whose whole log is JSON lines.

No Triton is needed: the backend is a closed port, so an image request fails its
attempt and the gateway logs that failure *while serving the request* — the line that
must carry the request's ``X-Request-Id`` (and, with tracing on, the trace the client's
``traceparent`` started). The admin audit line (the access log off) is another.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once
ROUTES = f"""
backends:
  triton: {{url: "{CLOSED}", health_interval_ms: 60000}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 100}}
default_route: {{name: default, model: draft, budget_ms: 2000}}
"""
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each parsed as JSON (a line that is not fails the test)."""
    out = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{log.name}:{number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        out.append(record)
    return out


def gateway(directory: Path, extra: list[str], env: dict[str, str] | None = None) -> GatewayProcess:
    routes = directory / "routes.yaml"
    routes.write_text(ROUTES)
    return GatewayProcess(routes, CLOSED, directory / "gateway.log", extra=extra, env=env)


@pytest.fixture()
def json_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """``--log-format json`` at uvicorn's ``info`` (its own lines too), no access log (so
    the audit line goes through logging)."""
    gw = gateway(tmp_path, ["--log-format", "json", "--log-level", "info", "--no-access-log"])
    yield gw
    gw.stop()


def test_every_line_is_json_and_request_lines_carry_the_request_id(json_gateway: GatewayProcess) -> None:
    gw = json_gateway
    failed = httpx.post(
        gw.url + "/v1/images/generations",
        json={"prompt": "a cat", "model": "draft"},
        headers={"X-Request-Id": "json-logs-image-1"},
        timeout=30,
    )
    assert failed.status_code == 503 and failed.headers["x-request-id"] == "json-logs-image-1"
    reload = httpx.post(gw.url + "/admin/reload", headers={**gw.admin, "X-Request-Id": "json-logs-admin-2"}, timeout=30)
    assert reload.status_code == 200
    httpx.get(gw.url + "/healthz", timeout=10)  # served without a log line
    gw.stop()  # uvicorn's shutdown lines too
    records = lines(gw.log)
    for record in records:
        assert {"ts", "level", "logger", "message"} <= set(record), record
        assert isinstance(record["ts"], float) and record["level"] in ("debug", "info", "warning", "error", "critical")
    by_logger = {r["logger"] for r in records}
    assert {"router.cli", "uvicorn.error"} <= by_logger, by_logger  # the gateway's own and the server's
    attempt = [r for r in records if r["logger"] == "router.dispatch" and "attempt at draft failed" in r["message"]]
    assert attempt and all(r["request_id"] == "json-logs-image-1" for r in attempt), attempt
    audit = [r for r in records if r["logger"] == "router.audit"]
    assert len(audit) == 1 and audit[0]["request_id"] == "json-logs-admin-2"
    assert json.loads(audit[0]["message"])["audit"] == "reload"
    outside = [r for r in records if r["logger"] in ("router.cli", "uvicorn.error")]
    assert outside and not any("request_id" in r for r in outside)  # no request: no id, never a stale one
    assert not any("trace_id" in r for r in records)  # tracing is off


def test_a_traced_request_logs_its_trace_id(tmp_path: Path) -> None:
    """With tracing on, a line logged inside the request carries the trace the client's
    ``traceparent`` started (the server span continues it)."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",  # to a closed port: exporting fails, and says so in JSON
        "OTEL_EXPORTER_OTLP_ENDPOINT": CLOSED,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }
    gw = gateway(tmp_path, ["--log-format", "json", "--no-access-log"], env)
    try:
        headers = {"X-Request-Id": "json-logs-traced", "traceparent": TRACEPARENT}
        body = {"prompt": "a cat", "model": "draft"}
        assert httpx.post(gw.url + "/v1/images/generations", json=body, headers=headers, timeout=30).status_code == 503
        deadline = time.monotonic() + 10
        while "json-logs-traced" not in gw.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gw.stop()
    attempt = [r for r in lines(gw.log) if r.get("request_id") == "json-logs-traced"]
    assert attempt and all(r["trace_id"] == TRACE_ID for r in attempt), attempt


def test_text_stays_the_default(tmp_path: Path) -> None:
    """Without the option a person reads the log: uvicorn's own lines, plain text."""
    gw = gateway(tmp_path, ["--log-level", "info"])
    gw.stop()
    text = gw.log.read_text()
    assert "gateway listening on http://127.0.0.1:" in text
    assert "INFO:     Uvicorn running on" in text or "INFO:     Waiting for application startup" in text
    assert not text.lstrip().startswith("{")
