"""`usage` through a real gateway on a real Triton: the compute billed is the model's
own (within 10 % of Triton's statistics), a cache hit costs the hit price and no
compute, and every protocol carries the same figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from image_router.triton import TritonServer
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration


def routes(store: str) -> str:
    return f"""
backends:
  triton: {{url: "${{TRITON_URL}}"}}
billing: {{currency: USD, gpu_hour_price: 3.6, cache_hit_price: 0.0001}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150, price: {{gpus: 1, per_image: 0.001}}}}
cache: {{store: "{store}", max_bytes: 50000000, ttl_s: 600}}
default_route: {{name: default, model: draft, budget_ms: 8000, cache: {{}}}}
"""


def _compute_infer_s(triton: TritonServer, model: str, at_least: int = 0) -> tuple[float, int]:
    """Triton's compute_infer seconds and successes, once it has counted ``at_least``
    (it records a request's statistics after answering: a read at once can miss it)."""
    for _ in range(100):
        stats = httpx.get(f"{triton.http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
        count = sum(int(s["inference_stats"]["success"]["count"]) for s in stats)
        if count >= at_least:
            return sum(int(s["inference_stats"]["compute_infer"]["ns"]) for s in stats) / 1e9, count
        time.sleep(0.05)
    raise AssertionError(f"Triton counted {count} requests, not {at_least}")


@pytest.fixture()
def gateway(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> GatewayProcess:
    return start_gateway(routes(f"disk://{tmp_path / 'cache'}"))


def test_usage_is_the_models_compute_priced_and_a_hit_costs_the_hit_price(
    gateway: GatewayProcess, triton: TritonServer
) -> None:
    """Six draft images: Σ usage.compute_s within 10 % of Triton's compute_infer delta
    (and never above it), cost = per_image + compute x rate; then the same requests hit
    the store: 0 compute, cost = cache_hit_price, source `cache`."""
    before, count = _compute_infer_s(triton, "draft")
    billed, costs = 0.0, []
    for seed in range(6):
        answer = httpx.post(
            gateway.url + "/api/v1/generate", json={"prompt": "a fox", "seed": seed, "response": "json"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        assert usage["compute_source"] == "model" and usage["images"] == 1 and usage["cached_images"] == 0
        assert usage["total_tokens"] == 0 and usage["currency"] == "USD"
        assert usage["cost"] == pytest.approx(0.001 + usage["compute_s"] * 0.001, abs=2e-6)
        assert answer.headers["x-router-usage"].startswith(
            f"images=1, cached=0, compute-ms={round(usage['compute_s'] * 1000)}"
        )
        billed += usage["compute_s"]
        costs.append(usage["cost"])
    triton_s = _compute_infer_s(triton, "draft", count + 6)[0] - before
    assert 0.9 * triton_s <= billed <= triton_s * 1.0001, (billed, triton_s)

    hit = httpx.post(
        gateway.url + "/api/v1/generate", json={"prompt": "a fox", "seed": 0, "response": "json"}, timeout=30
    )
    assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT", hit.text
    usage = hit.json()["usage"]
    assert (usage["compute_s"], usage["compute_source"], usage["cached_images"]) == (0.0, "cache", 1)
    assert usage["cost"] == 0.0001 and usage["cost_details"]["cache_hits"] == 0.0001
    assert _compute_infer_s(triton, "draft")[1] == count + 6, "the hit never reached Triton"

    openai = httpx.post(gateway.url + "/v1/images/generations", json={"prompt": "an openai fox"}, timeout=30)
    assert openai.status_code == 200, openai.text
    assert openai.json()["usage"]["compute_source"] == "model" and openai.json()["usage"]["output_tokens"] == 0

    # the ledger: the run's costs (6 made, 1 hit, 1 OpenAI) sum exactly to /admin/usage
    answered = [*costs, usage["cost"], openai.json()["usage"]["cost"]]
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(gateway.url + "/admin/usage", headers=gateway.admin, timeout=10).json()
        if sum(r["images"] for r in report["rows"]) == 8 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    (row,) = report["rows"]
    assert (row["tenant"], row["route"], row["model"], row["images"], row["cached_images"]) == (
        "_anonymous",
        "default",
        "draft",
        8,
        1,
    )
    assert row["cost_micros"] == sum(round(c * 1_000_000) for c in answered)
    assert report["currency"] == "USD"
    csv_text = httpx.get(gateway.url + "/admin/usage?format=csv", headers=gateway.admin, timeout=10).text
    assert csv_text.splitlines()[0] == "day,tenant,route,model,images,cached_images,compute_s,cost"


def test_kserve_answers_carry_the_usage_parameters(gateway: GatewayProcess) -> None:
    """The same figures in a KServe answer's parameters (router_usage, router_cost)."""
    client = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    prompt = httpclient.InferInput("PROMPT", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a kserve fox"], dtype=object))
    result = client.infer("draft", [prompt])
    parameters = result.get_response()["parameters"]
    assert parameters["router_usage"].startswith("images=1, cached=0, compute-ms=")
    assert float(parameters["router_cost"]) > 0.001
