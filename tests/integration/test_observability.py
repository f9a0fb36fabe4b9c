"""Metrics, access log and traces of the real gateway in front of the real Triton."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from image_router.app import create_app
from image_router.telemetry import Tracing
from image_router.triton import TritonServer
from image_router.triton.launcher import free_port
from tests.integration.routes_common import ROUTING, TIERS
from tests.procs import GatewayProcess, scrape

pytestmark = pytest.mark.integration


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
    )


def test_metrics_move_with_traffic_with_the_right_labels(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(ROUTING, extra=["--no-watch"])  # one reload, the admin call's: the watcher would race it
    before = scrape(gw)
    assert value(before, "router_config_info", digest=httpx.get(gw.url + "/readyz").json()["config_digest"]) == 1
    # quality (3.5 s hint) cannot fit a 300 ms budget even at its best: refused at once
    assert httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x", "intent": "impossible"}).status_code == 504
    for i in range(3):
        assert httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"a sketch {i}"}, timeout=30).status_code == 200
    for i in range(20):
        # the last one pinned to the canary cohort: 20 random draws at 20% miss it 1% of the time
        pin = {"X-Canary": "always"} if i == 19 else {}
        httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"p{i}", "intent": "canary"}, headers=pin, timeout=30)
    tight = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a castle", "intent": "tight"}, timeout=30)
    assert tight.headers["x-router-fallback"] == "quality:slow"
    gw.routes.write_text(ROUTING + "\nbogus: 1\n")
    httpx.post(gw.url + "/admin/reload", headers=gw.admin)
    after = scrape(gw)

    def grew(name: str, by: float = 1, **labels: str) -> None:
        """Exactly ``by``: nothing else ran on this gateway, so more is double counting."""
        delta = value(after, name, **labels) - value(before, name, **labels)
        assert delta == by, f"{name}{labels} grew by {delta}, not {by}"

    grew("router_requests_total", 3, api="generate", route="sketch", model="draft@1", status="200")
    grew("router_request_duration_seconds_count", 3, route="sketch", outcome="ok")
    grew("router_request_duration_seconds_count", 1, route="tight", outcome="downgraded")
    grew("router_request_duration_seconds_count", 1, route="impossible", outcome="budget_exhausted")
    grew("router_downgrades_total", 1, route="tight", model="quality", reason="slow")
    grew("router_budget_exhausted_total", 1, route="impossible")
    grew("router_canary_assignments_total", 20, route="canary")
    assert value(after, "router_canary_assignments_total", route="canary", canary="true") > 0
    grew("router_config_reloads_total", 1, result="failure")
    assert ("router_model_inflight", (("model", "draft"),)) in after
    assert value(after, "router_access_log_dropped_total") == 0
    buckets = [dict(ls)["le"] for (n, ls) in after if n == "router_request_duration_seconds_bucket"]
    assert "0.01" in buckets and "60.0" in buckets


def test_access_log_is_one_json_line_per_request(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(ROUTING)
    ids = []
    for i in range(3):
        r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"a sketch {i}"}, timeout=30)
        ids.append(r.headers["x-request-id"])
    httpx.post(gw.url + "/api/v1/generate", content=b"{broken", timeout=30)
    lines: list[dict[str, object]] = []
    deadline = time.monotonic() + 10  # lines are written in batches, every second
    while len(lines) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        lines = [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith("{")]
    by_id = {line["request_id"]: line for line in lines}
    for rid in ids:
        assert sum(line["request_id"] == rid for line in lines) == 1, f"{rid} logged more than once"
        entry = by_id[rid]
        assert entry["route"] == "sketch" and entry["model"] == "draft@1" and entry["status"] == 200
        assert entry["attempts"] == "1" and entry["canary"] == "false" and entry["latency_ms"] > 0
    assert len(lines) == 4 and sum(line["status"] == 400 for line in lines) == 1, lines


def test_buffered_access_log_lines_are_written_at_shutdown(start_gateway: Callable[..., GatewayProcess]) -> None:
    """With a long flush interval nothing is written while serving; a graceful stop
    (SIGTERM, as Kubernetes sends) writes every line it holds."""
    gw = start_gateway(ROUTING, extra=["--access-log-flush", "60"])
    ids = [
        httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"a sketch {i}"}, timeout=30).headers["x-request-id"]
        for i in range(3)
    ]
    time.sleep(0.5)
    assert not any(line.startswith("{") for line in gw.log.read_text().splitlines())
    t0 = time.monotonic()
    gw.stop()
    took = time.monotonic() - t0
    text = gw.log.read_text()
    written = [json.loads(line)["request_id"] for line in text.splitlines() if line.startswith("{")]
    assert written == ids, (f"stop took {took:.1f} s, exit {gw.process.returncode}", text[-3000:])


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in upstream that records request headers and answers 503 (unavailable),
    so the gateway must fall back to the real Triton."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"error":"model unavailable"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture()
def in_process_gateway(
    request: pytest.FixtureRequest, triton: TritonServer, tmp_path: Path
) -> Iterator[tuple[str, InMemorySpanExporter, list[dict[str, str]]]]:
    """The gateway app in this process (for the in-memory span exporter), on a real port;
    indirect parametrization picks the sampler (default: the SDK's, parent-based always-on)."""
    _Recorder.seen = []
    recorder = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        TIERS.replace("${TRITON_URL}", triton.http_url).replace(
            "models:\n",
            f'  flaky: {{url: "http://127.0.0.1:{recorder.server_port}", retry: {{attempts: 0}}}}\nmodels:\n'
            "  upstream: {backend: flaky, triton_model: noop, latency_hint_ms: 20}\n",
        )
        + "default_route: {name: main, model: upstream, budget_ms: 3000, fallback: [noop]}\n"
    )
    exporter = InMemorySpanExporter()
    sampler = getattr(request, "param", None)
    app = create_app(
        routes, watch=False, tracing=Tracing.with_processor(SimpleSpanProcessor(exporter), sampler=sampler)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", exporter, _Recorder.seen
    server.should_exit = True
    thread.join(10)
    recorder.shutdown()
    recorder.server_close()


def test_a_downgraded_request_has_a_server_span_and_two_attempt_spans_and_propagates_traceparent(
    in_process_gateway: tuple[str, InMemorySpanExporter, list[dict[str, str]]],
) -> None:
    url, exporter, seen = in_process_gateway
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = httpx.post(url + "/api/v1/generate", json={"prompt": "a fox"}, headers={"traceparent": parent}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-router-model"] == "noop@1" and r.headers["x-router-fallback"] == "upstream:unavailable"
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.name == "POST generate"]
    attempts = sorted((s for s in spans if s.name.startswith("attempt ")), key=lambda s: s.attributes["router.attempt"])
    assert len(server) == 1 and len(attempts) == 2
    trace_id = server[0].context.trace_id
    assert trace_id == int("0af7651916cd43dd8448eb211c80319c", 16), "the client's traceparent is continued"
    assert all(a.parent is not None and a.parent.span_id == server[0].context.span_id for a in attempts)
    first, second = (a.attributes for a in attempts)
    assert first["router.model"] == "upstream" and first["router.outcome"] == "unavailable"
    assert second["router.model"] == "noop" and second["router.outcome"] == "ok"
    assert second["router.model.remote"] == "noop" and second["router.timeout_ms"] > 0
    s = server[0].attributes
    assert s["router.route"] == "main" and s["router.model"] == "noop@1" and s["router.attempts"] == "2"
    assert s["router.fallback"] == "upstream:unavailable" and s["router.canary"] == "false"
    assert s["http.response.status_code"] == 200
    sent = seen[0]["traceparent"]
    assert sent.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert sent.split("-")[2] == format(attempts[0].context.span_id, "016x"), "the backend sees the attempt span"


def test_an_unsampled_trace_makes_no_span_and_still_propagates_its_traceparent(
    in_process_gateway: tuple[str, InMemorySpanExporter, list[dict[str, str]]],
) -> None:
    """The client decided not to sample (flags 00): the parent-based sampler follows it,
    no span is recorded, and the backend gets the same unsampled trace context."""
    url, exporter, seen = in_process_gateway
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    r = httpx.post(url + "/api/v1/generate", json={"prompt": "a fox"}, headers={"traceparent": parent}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-router-fallback"] == "upstream:unavailable", "both attempts ran"
    assert exporter.get_finished_spans() == ()
    _, trace_id, _, flags = seen[0]["traceparent"].split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and flags == "00"


@pytest.mark.parametrize("in_process_gateway", [ParentBasedTraceIdRatio(0.0)], indirect=True)
def test_a_new_trace_not_sampled_costs_no_span_and_no_header(
    in_process_gateway: tuple[str, InMemorySpanExporter, list[dict[str, str]]],
) -> None:
    """Sampling at 0 and no trace context from the client: nothing is recorded and
    nothing is passed on (the cheap path a sampled-down gateway takes for most requests);
    a client's sampled trace is still followed."""
    url, exporter, seen = in_process_gateway
    r = httpx.post(url + "/api/v1/generate", json={"prompt": "a fox"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-router-attempts"] == "2", r.text
    assert exporter.get_finished_spans() == () and "traceparent" not in seen[0]
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    httpx.post(url + "/api/v1/generate", json={"prompt": "a fox"}, headers={"traceparent": parent}, timeout=30)
    assert {s.name for s in exporter.get_finished_spans()} == {"POST generate", "attempt upstream", "attempt noop"}
    assert seen[1]["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(("sampler", "spans"), [("parentbased_always_on", True), ("always_off", False)])
def test_tracing_is_configured_by_the_standard_otel_variables(
    start_gateway: Callable[..., GatewayProcess], sampler: str, spans: bool
) -> None:
    """As an operator turns it on: environment variables only, on a real gateway process
    (the console exporter writes each span as JSON to the gateway's output)."""
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "imgs-under-test",
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    gw = start_gateway(ROUTING, env=env)
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a sketch of a fox"}, timeout=30)
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = gw.log.read_text()
        if "imgs-under-test" in text or not spans:
            break
        time.sleep(0.2)
    if not spans:
        time.sleep(1.0)  # give a wrongly sampled span the time to be exported
        assert "imgs-under-test" not in gw.log.read_text()
        return
    assert '"service.name": "imgs-under-test"' in text, text[-2000:]
    assert '"router.model": "draft"' in text and '"kind": "SpanKind.CLIENT"' in text


def test_a_grpc_request_continues_the_clients_trace(triton: TritonServer, tmp_path: Path) -> None:
    """The gRPC front door: ``traceparent`` metadata is continued by a SERVER span whose
    children are the attempts, tagged like an HTTP request's."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from image_router.rpc import GrpcOptions

    routes = tmp_path / "routes.yaml"
    routes.write_text(TIERS.replace("${TRITON_URL}", triton.http_url) + "default_route: {name: main, model: noop}\n")
    exporter = InMemorySpanExporter()
    grpc_port = free_port()
    app = create_app(
        routes,
        watch=False,
        tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)),
        grpc=GrpcOptions(host="127.0.0.1", port=grpc_port),
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        prompt = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"a fox"]], dtype=object))
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        client.infer("auto", [prompt], headers={"traceparent": parent})
        client.close()
        spans = exporter.get_finished_spans()
        server_spans = [s for s in spans if s.name == "grpc ModelInfer"]
        assert len(server_spans) == 1
        span = server_spans[0]
        assert span.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
        assert span.attributes["router.route"] == "main" and span.attributes["router.model"] == "noop@1"
        attempts = [s for s in spans if s.name.startswith("attempt ")]
        assert attempts and all(a.parent is not None and a.parent.span_id == span.context.span_id for a in attempts)
    finally:
        server.should_exit = True
        thread.join(10)
