"""One data plane for every edge, against real processes (Triton, the gateway, real
clients): the same request expressed in each protocol — JSON ``/api/v1/generate``,
OpenAI Images, OpenAI Images streamed, KServe v2 over HTTP (``tritonclient.http``) and
over gRPC (``tritonclient.grpc``) — with the same tenant, sticky key and steering
headers gets the same route, arm, priority, seed and image bytes, and the tenant is
counted exactly once per request. Run for a tenant allowed to steer, one that is not,
and one under a priority ceiling."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess, scrape

pytestmark = pytest.mark.integration
Start = Callable[..., GatewayProcess]

KEYS = {"steers": "sk-steers-0123456789abcdef", "plain": "sk-plain-0123456789abcdef", "ceiled": "sk-ceiled-012345678"}
ROUTES = (
    (
        TIERS
        + """  draft-canary: {backend: triton, triton_model: draft, latency_hint_ms: 150}
tenants:
  mode: keys
  tenants:
    steers: {keys: ["STEERS_KEY"], overrides: [X-Canary, X-Priority, X-Intent], images_per_day: 1000}
    plain: {keys: ["PLAIN_KEY"], images_per_day: 1000}
    ceiled: {keys: ["CEILED_KEY"], overrides: [X-Priority], priority_ceiling: 3, images_per_day: 1000}
routes:
  - name: special
    match: {intent: special}
    model: draft
    budget_ms: 30000
  - name: ab
    match: "prompt:parity"
    split:
      - {model: draft, weight: 50}
      - {model: draft-canary, weight: 50, canary: true}
    sticky: header:X-User-Id
    priority: 1
    budget_ms: 30000
default_route: {name: main, model: draft, budget_ms: 30000}
"""
    )
    .replace("STEERS_KEY", KEYS["steers"])
    .replace("PLAIN_KEY", KEYS["plain"])
    .replace("CEILED_KEY", KEYS["ceiled"])
)
PROMPT = "a parity check of a lighthouse"
SEED = 7
STEERING = {"X-Canary": "always", "X-Priority": "2", "X-Intent": "special", "X-User-Id": "user-7"}


def _png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def _facts(route: str, model: str, priority: str | None, image: np.ndarray) -> dict[str, Any]:
    return {"route": route, "model": model.split("@")[0], "priority": priority, "image": image}


def via_json(gw: GatewayProcess, headers: dict[str, str]) -> dict[str, Any]:
    body = {"prompt": PROMPT, "seed": SEED, "response": "json"}
    r = httpx.post(gw.url + "/api/v1/generate", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]
    assert image["seed"] == SEED
    return _facts(r.headers["x-router-route"], r.headers["x-router-model"], r.headers.get("x-router-priority"),
                  _png(image["b64_png"]))  # fmt: skip


def via_openai(gw: GatewayProcess, headers: dict[str, str]) -> dict[str, Any]:
    key = headers.pop("Authorization").removeprefix("Bearer ")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    raw = client.images.with_raw_response.generate(
        prompt=PROMPT, response_format="b64_json", extra_body={"seed": SEED}, extra_headers=headers
    )
    answer = raw.parse()
    assert answer.data is not None and answer.data[0].b64_json is not None
    return _facts(raw.headers["x-router-route"], raw.headers["x-router-model"], raw.headers.get("x-router-priority"),
                  _png(answer.data[0].b64_json))  # fmt: skip


def via_stream(gw: GatewayProcess, headers: dict[str, str]) -> dict[str, Any]:
    body = {"prompt": PROMPT, "seed": SEED, "stream": True, "partial_images": 0}
    completed = None
    with httpx.stream("POST", gw.url + "/v1/images/generations", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] != "error", event
                if event["type"] == "image_generation.completed":
                    completed = event
    assert completed is not None
    return _facts(completed["router_route"], completed["router_model"], completed.get("router_priority"),
                  _png(completed["b64_json"]))  # fmt: skip


def _inputs(module: Any) -> list[Any]:
    prompt = module.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=object))
    seed = module.InferInput("SEED", [1, 1], "INT64")
    seed.set_data_from_numpy(np.array([[SEED]], dtype=np.int64))
    return [prompt, seed]


def via_kserve_http(gw: GatewayProcess, headers: dict[str, str]) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"), network_timeout=60)
    result = client.infer("auto", _inputs(httpclient), headers=headers)
    params = result.get_response()["parameters"]
    return _facts(params["router_route"], params["router_model"], params.get("router_priority"),
                  result.as_numpy("IMAGE")[0])  # fmt: skip


def via_kserve_grpc(gw: GatewayProcess, headers: dict[str, str]) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    metadata = {k.lower(): v for k, v in headers.items()}
    result = client.infer("auto", _inputs(grpcclient), headers=metadata, client_timeout=60)
    params = result.get_response().parameters
    priority = params["router_priority"].string_param if "router_priority" in params else None
    return _facts(params["router_route"].string_param, params["router_model"].string_param, priority,
                  result.as_numpy("IMAGE")[0])  # fmt: skip


EDGES = {
    "json": via_json,
    "openai": via_openai,
    "openai-stream": via_stream,
    "kserve-http": via_kserve_http,
    "kserve-grpc": via_kserve_grpc,
}
# tenant -> what every edge must agree on: (route, model, priority)
EXPECTED = {
    "steers": ("special", "draft", "2"),  # X-Intent, X-Priority honoured
    "plain": ("ab", None, "1"),  # nothing steered: the sticky arm, the route's priority
    "ceiled": ("ab", None, "3"),  # X-Priority 2 allowed, capped at its ceiling 3
}


@pytest.fixture(scope="module")
def parity_gw(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.procs import running_gateway

    with running_gateway(triton.http_url, tmp_path_factory.mktemp("parity"), ROUTES) as gw:
        yield gw


def _served(gw: GatewayProcess, tenant: str) -> float:
    return scrape(gw).get(("router_tenant_requests_total", (("outcome", "served"), ("tenant", tenant))), 0.0)


@pytest.mark.parametrize("tenant", sorted(EXPECTED))
def test_the_same_request_gets_the_same_decision_and_image_through_every_edge(
    parity_gw: GatewayProcess, tenant: str
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for edge, call in EDGES.items():
        before = _served(parity_gw, tenant)
        seen[edge] = call(parity_gw, {"Authorization": f"Bearer {KEYS[tenant]}", **STEERING})
        assert _served(parity_gw, tenant) == before + 1, f"{edge}: the tenant is counted exactly once"
    route, model, priority = EXPECTED[tenant]
    first = seen["json"]
    for edge, facts in seen.items():
        assert (facts["route"], facts["priority"]) == (route, priority), (edge, facts)
        assert facts["model"] == first["model"], f"{edge} served another arm"
        if model is not None:
            assert facts["model"] == model, edge
        assert np.array_equal(facts["image"], first["image"]), f"{edge}: other image bytes"


def test_a_tenant_that_may_not_steer_gets_the_sticky_arm_whatever_x_canary_says(parity_gw: GatewayProcess) -> None:
    """``X-Canary: never`` and ``always`` give the plain tenant the same arm (its sticky
    one); the steering tenant gets what it asks, on every edge."""
    arms = {
        canary: {
            via_json(
                parity_gw, {"Authorization": f"Bearer {KEYS['plain']}", "X-Canary": canary, "X-User-Id": "user-7"}
            )["model"]
            for _ in range(2)
        }
        for canary in ("always", "never")
    }
    assert arms["always"] == arms["never"] and len(arms["always"]) == 1
    for edge in ("openai-stream", "kserve-grpc"):
        got = EDGES[edge](parity_gw, {"Authorization": f"Bearer {KEYS['steers']}", "X-Canary": "never",
                                      "X-User-Id": "user-7"})  # fmt: skip
        assert (got["route"], got["model"]) == ("ab", "draft"), edge


def test_a_failed_request_is_logged_alike_over_http_and_grpc(parity_gw: GatewayProcess) -> None:
    """KServe's ``timeout`` parameter of 1 µs leaves no budget: both edges answer 504 /
    DEADLINE_EXCEEDED, and their access-log lines carry the same route and attempts
    (gRPC's once carried the route only)."""
    headers = {"Authorization": f"Bearer {KEYS['plain']}", "X-User-Id": "user-7"}
    http = httpclient.InferenceServerClient(parity_gw.url.removeprefix("http://"), network_timeout=60)
    with pytest.raises(Exception, match="budget"):
        http.infer("auto", _inputs(httpclient), headers={**headers, "X-Request-Id": "fail-http"}, timeout=1)
    grpc_client = grpcclient.InferenceServerClient(parity_gw.grpc_target)
    with pytest.raises(Exception, match="budget"):
        grpc_client.infer(
            "auto", _inputs(grpcclient), headers={k.lower(): v for k, v in headers.items()},
            timeout=1, request_id="fail-grpc", client_timeout=60,
        )  # fmt: skip
    lines: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10  # the access log is written in batches, every second
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        for line in parity_gw.log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("request_id") in ("fail-http", "fail-grpc"):
                lines[json.loads(line)["request_id"]] = json.loads(line)
    assert lines["fail-http"]["status"] == lines["fail-grpc"]["status"] == 504
    for field in ("route", "attempts", "tenant"):
        assert lines["fail-http"].get(field) == lines["fail-grpc"].get(field), field
    assert lines["fail-grpc"]["route"] == "ab" and "attempts" in lines["fail-grpc"]
