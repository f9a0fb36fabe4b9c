"""``GET /admin/billing/reconcile`` against a real Triton (gRPC, so abandoned work stops
there): what the gateway billed agrees with Triton's own ``batch_stats`` compute, and
the attempts it gave up on — one timed out, one whose client left — are counted as
wasted, in the Prometheus series, and never in ``/admin/usage``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from image_router.triton import TritonServer
from tests.procs import GatewayProcess, scrape

pytestmark = pytest.mark.integration

ROUTES = """
backends:
  triton: {{url: "${{TRITON_URL}}", protocol: grpc, grpc_urls: ["127.0.0.1:{grpc_port}"]}}
billing: {{currency: USD, gpu_hour_price: 3.6}}
models:
  preview: {{backend: triton, triton_model: preview, latency_hint_ms: 400, price: {{gpus: 1, per_image: 0.001}}}}
  quality: {{backend: triton, triton_model: quality, latency_hint_ms: 200, price: {{gpus: 1}}}}
routes:
  - name: abandon
    match: {{intent: abandon}}
    model: quality
    budget_ms: 300
default_route: {{name: default, model: preview, budget_ms: 20000}}
"""


def _successes(triton: TritonServer, model: str) -> int:
    stats = httpx.get(f"{triton.http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def _reconcile(gw: GatewayProcess, window: str = "1h") -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{gw.url}/admin/billing/reconcile?window={window}", headers=gw.admin, timeout=30)
    assert answer.status_code == 200, answer.text
    return {row["model"]: row for row in answer.json()["rows"]}


def test_billed_compute_reconciles_with_triton_and_given_up_attempts_are_wasted(
    start_gateway: Callable[..., GatewayProcess], triton: TritonServer
) -> None:
    gw = start_gateway(ROUTES.format(grpc_port=triton.config.grpc_port))
    bad = httpx.get(f"{gw.url}/admin/billing/reconcile?window=2x", headers=gw.admin, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert bad.json()["error"]["param"] == "window"
    assert httpx.get(f"{gw.url}/admin/billing/reconcile", timeout=10).status_code == 401
    _reconcile(gw)  # the first call starts the reconciler: its first read is the window's start

    # five preview images: what they were billed is what Triton computed, within 10 %
    before = _successes(triton, "preview")
    billed = 0.0
    for seed in range(5):
        answer = httpx.post(f"{gw.url}/api/v1/generate", json={"prompt": "a fox", "seed": seed, "response": "json"},
                            timeout=60)  # fmt: skip
        assert answer.status_code == 200 and answer.headers["x-router-model"].startswith("preview"), answer.text
        billed += answer.json()["usage"]["compute_s"]
    deadline = time.monotonic() + 10
    while _successes(triton, "preview") < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # Triton records a request's statistics after answering it
    preview = _reconcile(gw)["preview"]
    print(f"\npreview: billed {billed:.3f} s, {preview}")
    assert preview["attributed_s"] == pytest.approx(billed, abs=1e-3)
    assert preview["wasted_s"] == 0.0 and preview["wasted"] == {}
    # Triton's batch_stats hold the model's whole execute() (input parsing, the output
    # tensors) around the generator calls COMPUTE_NS times: never less, at most 10 % more
    assert billed <= preview["triton_compute_s"] * 1.0001
    assert billed >= 0.9 * preview["triton_compute_s"]
    assert abs(preview["unattributed_s"]) <= 0.1 * preview["triton_compute_s"]
    assert 0 < preview["utilisation"] <= 1.0

    # a quality attempt the gateway gives up on at its 300 ms budget, and one whose client
    # leaves after 0.5 s: both wasted (gRPC: Triton stops them within a step), never billed
    timed_out = httpx.post(f"{gw.url}/api/v1/generate", json={"prompt": "a castle", "intent": "abandon"}, timeout=30)
    assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "budget_exhausted", timed_out.text
    with contextlib.suppress(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/api/v1/generate", json={"prompt": "a castle", "model": "quality"}, timeout=0.5)
        pytest.fail("a quality image in 0.5 s: the client never left")
    time.sleep(1.0)  # the gateway notices the client left; Triton ends the call within a step
    quality = _reconcile(gw)["quality"]
    print(f"quality: {quality}")
    assert quality["attributed_s"] == 0.0
    assert set(quality["wasted"]) == {"timeout", "abandoned"}
    assert 0.2 <= quality["wasted"]["timeout"] <= 0.5 and 0.3 <= quality["wasted"]["abandoned"] <= 0.8
    # what Triton computed for them is the time they ran until cancelled: within a step
    # (12 steps: a 2.4 s image) of the time the gateway counts
    assert quality["triton_compute_s"] <= quality["wasted_s"] + 0.5

    metrics = scrape(gw)
    for reason in ("timeout", "abandoned"):
        key = ("router_compute_wasted_seconds_total", (("model", "quality"), ("reason", reason)))
        assert metrics[key] == pytest.approx(quality["wasted"][reason], abs=1e-3)
    deadline = time.monotonic() + 10
    while True:  # the ledger is written off the request path
        rows = httpx.get(f"{gw.url}/admin/usage", headers=gw.admin, timeout=10).json()["rows"]
        if sum(r["images"] for r in rows) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(r["model"], r["images"]) for r in rows] == [("preview", 5)], "nothing given up on is billed"
    assert rows[0]["compute_s"] == pytest.approx(billed, abs=2e-3)
