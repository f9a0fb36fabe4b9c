"""README promises that had no test (issue 12), each against a real gateway in front of the
real Triton: route limits, sticky `query:`/`field:`, header `regex:`/`equals`, the seed
and timing headers, JSON by `Accept`, the KServe `intent` parameter and version path,
`GET /v2` and the repository index, the 1 MiB body limit at its boundary, and request ids
on answers and errors."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from image_router.config import compile_text
from image_router.policy.split import choose_arm, sticky_key
from image_router.triton import TritonServer
from tests.procs import GatewayProcess, running_gateway

pytestmark = pytest.mark.integration

ROUTES = """
backends: {triton: {url: "${TRITON_URL}"}}
models:
  noop: {backend: triton, latency_hint_ms: 20}
  noop-canary: {backend: triton, triton_model: noop, latency_hint_ms: 20}
  absent: {backend: triton, triton_model: not-in-the-repository}  # listed, never loaded
routes:
  - name: limited
    match: limited
    model: noop
    limits: {max_steps: 5, max_side: 16}
  - name: by-query
    match: by-query
    split: [{model: noop, weight: 50}, {model: noop-canary, weight: 50, canary: true}]
    sticky: query:user
  - name: by-field
    match: {prompt: "^by-field$"}
    split: [{model: noop, weight: 50}, {model: noop-canary, weight: 50, canary: true}]
    sticky: field:intent
  - name: tier-regex
    match: {headers: {X-Tier: "regex:^(pro|team)$"}}
    model: noop
  - name: tier-equals
    match: {headers: {X-Plan: {equals: gold}}}
    model: noop
  - name: kserve-intent
    match: kintent
    model: noop-canary
default_route: {name: main, model: noop, budget_ms: 2000}
"""
TABLE = compile_text(ROUTES, env={"TRITON_URL": "http://x:1"})


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(triton.http_url, tmp_path_factory.mktemp("promises"), ROUTES) as gateway:
        yield gateway


def generate(gw: GatewayProcess, body: dict[str, object], **kw: object) -> httpx.Response:
    return httpx.post(gw.url + "/api/v1/generate", json=body, timeout=30, **kw)  # type: ignore[arg-type]


def test_route_limits_refuse_steps_and_sides_over_them_naming_the_field(gw: GatewayProcess) -> None:
    assert generate(gw, {"prompt": "x", "intent": "limited", "steps": 5, "width": 16, "height": 16}).status_code == 200
    for extra, field in (({"steps": 6}, "steps"), ({"width": 24}, "width"), ({"height": 24}, "height")):
        r = generate(gw, {"prompt": "x", "intent": "limited", **extra})
        assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text


def _policy_side(route_name: str, key_source: dict[str, dict[str, str]]) -> str:
    route = TABLE.route_named(route_name)
    assert route is not None
    key = sticky_key(route, key_source.get("headers", {}), key_source.get("query", {}), key_source.get("fields", {}))
    return choose_arm(route, key, random.Random(0)).arm.model + "@1"


def test_sticky_by_query_parameter_and_by_field_follow_the_policy_user_by_user(gw: GatewayProcess) -> None:
    sides = set()
    for i in range(24):
        user = f"user-{i}"
        by_query = generate(gw, {"prompt": "x", "intent": "by-query"}, params={"user": user})
        by_query_again = generate(gw, {"prompt": "x", "intent": "by-query"}, params={"user": user})
        assert by_query.headers["x-router-model"] == by_query_again.headers["x-router-model"]
        assert by_query.headers["x-router-model"] == _policy_side("by-query", {"query": {"user": user}})
        by_field = generate(gw, {"prompt": "by-field", "intent": user})
        assert by_field.headers["x-router-route"] == "by-field"
        expected = _policy_side("by-field", {"fields": {"intent": user, "model": ""}})
        assert by_field.headers["x-router-model"] == expected
        sides.add(by_query.headers["x-router-model"])
    assert sides == {"noop@1", "noop-canary@1"}, "a 50/50 split puts 24 users on both sides"


@pytest.mark.parametrize(
    ("headers", "route"),
    [
        ({"X-Tier": "pro"}, "tier-regex"),
        ({"X-Tier": "team"}, "tier-regex"),
        ({"X-Tier": "professional"}, "main"),  # the regex is anchored
        ({"X-Plan": "gold"}, "tier-equals"),
        ({"X-Plan": "golden"}, "main"),  # equals is exact
    ],
)
def test_header_match_in_regex_and_equals_forms(gw: GatewayProcess, headers: dict[str, str], route: str) -> None:
    assert generate(gw, {"prompt": "x"}, headers=headers).headers["x-router-route"] == route


def test_seed_header_timing_header_json_by_accept_and_request_ids(gw: GatewayProcess) -> None:
    seeded = generate(gw, {"prompt": "x", "seed": 7}, headers={"X-Request-Id": "req-seed-7"})
    assert seeded.headers["x-router-seed"] == "7" and seeded.headers["x-request-id"] == "req-seed-7"
    timing = seeded.headers["server-timing"]
    assert all(f"{part};dur=" in timing for part in ("queue", "backend", "total")), timing
    drawn = generate(gw, {"prompt": "x"}, headers={"Accept": "application/json"})
    assert drawn.headers["content-type"].startswith("application/json")
    body = drawn.json()
    assert body["route"] == "main" and len(body["images"]) == 1 and body["images"][0]["b64_png"]
    assert isinstance(body["images"][0]["seed"], int)
    bad = generate(gw, {"prompt": ""}, headers={"X-Request-Id": "req-bad"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "req-bad"
    assert bad.json()["error"]["request_id"] == "req-bad"


def _kserve_body(intent: str | None) -> tuple[bytes, dict[str, str]]:
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    params = {"intent": intent} if intent else None
    body, size = _get_inference_request([prompt], "", out, 0, False, False, 0, None, params)
    return body, {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}


def test_kserve_intent_parameter_version_path_server_metadata_and_index(gw: GatewayProcess) -> None:
    body, headers = _kserve_body("kintent")
    r = httpx.post(gw.url + "/v2/models/auto/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["x-router-route"] == "kserve-intent", r.text
    body, headers = _kserve_body(None)
    r = httpx.post(gw.url + "/v2/models/noop/versions/1/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["x-router-model"] == "noop@1"
    meta = httpx.get(gw.url + "/v2").json()
    assert meta["name"] == "image-router" and "binary_tensor_data" in meta["extensions"]
    index = httpx.post(gw.url + "/v2/repository/index").json()
    names = {entry["name"] for entry in index}
    assert {"noop", "noop-canary", "limited", "main"} <= names
    states = {entry["name"]: entry["state"] for entry in index}
    reasons = {entry["name"]: entry.get("reason", "") for entry in index}
    assert states["absent"] == "UNAVAILABLE" and "not ready" in reasons["absent"], index
    assert all(states[name] == "READY" for name in ("noop", "noop-canary", "limited", "main")), states
    for name, state in states.items():  # the index says what each name's own readiness check says
        ready = httpx.get(f"{gw.url}/v2/models/{name}/ready").status_code == 200
        assert state == ("READY" if ready else "UNAVAILABLE"), name


def test_the_body_limit_is_exactly_one_mebibyte(gw: GatewayProcess, tmp_path: Path) -> None:
    """A body of exactly 1 MiB is read (and judged on its content); one byte more is 413."""
    limit = 1 << 20
    head = json.dumps({"prompt": "x"}).encode()
    exactly = head[:-1] + b" " * (limit - len(head)) + b"}"
    assert len(exactly) == limit
    assert generate_raw(gw, exactly).status_code == 200
    over = generate_raw(gw, exactly + b" ")
    assert over.status_code == 413 and over.json()["error"]["code"] == "payload_too_large"


def generate_raw(gw: GatewayProcess, content: bytes) -> httpx.Response:
    return httpx.post(
        gw.url + "/api/v1/generate", content=content, headers={"content-type": "application/json"}, timeout=30
    )
