"""Abandoned work is cancelled in Triton when the backend speaks gRPC.

The proof is the model's own process: the CPU time of the quality model's Python
backend stub, read from /proc, after the gateway gave up on a request at 0.3 s. Over
gRPC it stops growing within one denoising step; over HTTP Triton computes the whole
image for nobody (the contrast is asserted too, so the measurement itself is shown to
see the difference).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from image_router.triton import TritonServer
from tests.procs import GatewayProcess, wait_model_idle

Start = Callable[..., GatewayProcess]

ROUTES = """
backends:
  triton: {{url: "${{TRITON_URL}}", protocol: {protocol}, grpc_urls: ["127.0.0.1:{grpc_port}"]}}
models:
  quality: {{backend: triton, triton_model: quality, latency_hint_ms: 200}}
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150}}
routes:
  - name: abandon
    match: {{intent: abandon}}
    model: quality
    budget_ms: 300
default_route: {{model: draft, budget_ms: 10000}}
"""


def _quiet(triton: TritonServer) -> float:
    assert triton.pid is not None
    return wait_model_idle("quality", triton.pid)


def _spent_after_abandoning(gw: GatewayProcess, triton: TritonServer) -> float:
    """Model CPU spent on one quality request the gateway abandons at its 300 ms budget."""
    before = _quiet(triton)
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a castle", "intent": "abandon", "seed": 1}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "budget_exhausted", r.text
    return _quiet(triton) - before


def test_an_abandoned_quality_request_stops_within_a_step_over_grpc(start_gateway: Start, triton: TritonServer) -> None:
    full_before = _quiet(triton)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.config.grpc_port}")
    p = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[b"a castle"]], dtype=object))
    client.infer("quality", [p])  # one whole image, for scale
    client.close()
    full = _quiet(triton) - full_before

    port = triton.config.grpc_port
    via_grpc = start_gateway(ROUTES.format(protocol="grpc", grpc_port=port), name="grpc.yaml")
    over_grpc = _spent_after_abandoning(via_grpc, triton)
    via_http = start_gateway(ROUTES.format(protocol="http", grpc_port=port), name="http.yaml")
    over_http = _spent_after_abandoning(via_http, triton)
    print(f"\nquality model CPU: whole {full:.2f} s; abandoned at 0.3 s: gRPC {over_grpc:.2f}, HTTP {over_http:.2f} s")
    assert over_grpc < 0.3 + 0.35 * full, "stopped within about a step of the 0.3 s budget"
    assert over_http > 0.8 * full, "over HTTP Triton computes the whole image anyway"


def test_a_grpc_backend_serves_the_same_images_and_a_gone_client_cancels(
    start_gateway: Start, triton: TritonServer
) -> None:
    # two files: a gateway watches its routes file, and would reload the other's
    via_grpc = start_gateway(ROUTES.format(protocol="grpc", grpc_port=triton.config.grpc_port), name="grpc.yaml")
    via_http = start_gateway(ROUTES.format(protocol="http", grpc_port=triton.config.grpc_port), name="http.yaml")
    ask = {"prompt": "a lighthouse", "seed": 5, "model": "draft"}
    a = httpx.post(via_grpc.url + "/api/v1/generate", json=ask, timeout=30)
    b = httpx.post(via_http.url + "/api/v1/generate", json=ask, timeout=30)
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert a.headers["x-router-model"].startswith("draft")

    # a gRPC client that gives up: the gateway's call to Triton is cancelled with it
    before = _quiet(triton)
    channel = grpc.insecure_channel(via_grpc.grpc_target)
    stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = grpcclient.service_pb2.ModelInferRequest(model_name="quality")
    request.inputs.add(name="PROMPT", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"a castle")
    future = stub.ModelInfer.future(request, timeout=30)
    time.sleep(0.4)
    future.cancel()
    spent = _quiet(triton) - before
    channel.close()
    assert spent < 1.2, f"the model ran on for {spent:.2f} s after its client left (gRPC)"

    # an HTTP client that disconnects: the same
    before = _quiet(triton)
    with contextlib.suppress(httpx.ReadTimeout):
        httpx.post(via_grpc.url + "/api/v1/generate", json={"prompt": "a castle", "model": "quality"}, timeout=0.4)
    spent = _quiet(triton) - before
    assert spent < 1.2, f"the model ran on for {spent:.2f} s after its client left (HTTP)"
    via_grpc.stop()  # flushes the access log
    lines = [json.loads(line) for line in via_grpc.log.read_text().splitlines() if line.startswith("{")]
    assert [line["api"] for line in lines if line["status"] == 499] == ["grpc", "generate"]


def test_a_model_marked_http_skips_grpc_on_a_grpc_backend(start_gateway: Start) -> None:
    """``protocol: http`` on a model: its inference goes over HTTP although the backend's
    gRPC endpoint is dead (nothing listens there); the backend's other models, over gRPC,
    cannot be served (a 5xx names the backend). The fast tier pays no gRPC client."""
    from image_router.triton.launcher import free_port

    dead = free_port()
    routes = ROUTES.format(protocol="grpc", grpc_port=dead).replace(
        "draft: {backend: triton, triton_model: draft, latency_hint_ms: 150}",
        "draft: {backend: triton, triton_model: draft, latency_hint_ms: 150, protocol: http}",
    )
    gw = start_gateway(routes)
    fast = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a kite", "seed": 1}, timeout=30)
    assert fast.status_code == 200 and fast.headers["x-router-model"].startswith("draft"), fast.text
    slow = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a kite", "model": "quality"}, timeout=30)
    assert slow.status_code >= 500, slow.text
