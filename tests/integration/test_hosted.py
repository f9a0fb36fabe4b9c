"""A hosted OpenAI-compatible API as a tier, against a real HTTP upstream process.

The images the upstream sends pass through untouched when the client asks for their
format (the same base64 text, byte for byte); they are decoded only for another format
or a tensor. Each failure of the upstream maps to the gateway's own error, within the
route's budget.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from PIL import Image

from tests.procs import GatewayProcess, HostedUpstream

ROUTES = """
backends:
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "${HOSTED_KEY}"}
models:
  remote: {backend: hosted, remote_model: img-1, latency_hint_ms: 100}
default_route: {model: remote, budget_ms: 1500}
env: [HOSTED_URL, HOSTED_KEY]
"""


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostedUpstream, GatewayProcess]]:
    directory = tmp_path_factory.mktemp("hosted")
    upstream = HostedUpstream(directory)
    routes = directory / "routes.yaml"
    routes.write_text(ROUTES)
    env = {"HOSTED_URL": upstream.url, "HOSTED_KEY": "sk-test"}
    gateway = GatewayProcess(routes, "http://127.0.0.1:9", directory / "gateway.log", env=env)
    yield upstream, gateway
    gateway.stop()
    upstream.stop()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_openai_sdk_gets_the_upstream_images_byte_for_byte(hosted: tuple[HostedUpstream, GatewayProcess]) -> None:
    upstream, gw = hosted
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
    answer = client.images.generate(model="remote", prompt="a lighthouse", n=2, size="64x48")
    sent = upstream.last()["data"]
    assert [item.b64_json for item in answer.data or []] == [item["b64_json"] for item in sent]  # type: ignore[index,union-attr]
    assert _pixels(base64.b64decode(answer.data[0].b64_json or "")).shape == (48, 64, 3)  # type: ignore[index]


def test_another_format_and_a_tensor_are_made_from_the_decoded_pixels(
    hosted: tuple[HostedUpstream, GatewayProcess],
) -> None:
    upstream, gw = hosted
    ask = {"prompt": "a harbour", "width": 40, "height": 32}
    r = httpx.post(gw.url + "/api/v1/generate", json={**ask, "format": "webp"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    png = base64.b64decode(upstream.last()["data"][0]["b64_json"])  # type: ignore[index]
    original = _pixels(png)
    webp = _pixels(r.content)
    assert webp.shape == original.shape == (32, 40, 3)
    # the same PNG again, asked for as PNG: passed through, not re-encoded
    same = httpx.post(gw.url + "/api/v1/generate", json={**ask, "format": "png"})
    assert same.content == png

    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a harbour"]], dtype=object))
    size = [httpclient.InferInput(n, [1, 1], "INT64") for n in ("WIDTH", "HEIGHT")]
    size[0].set_data_from_numpy(np.array([[40]], dtype=np.int64))
    size[1].set_data_from_numpy(np.array([[32]], dtype=np.int64))
    result = client.infer("remote", [prompt, *size])
    client.close()
    tensor = result.as_numpy("IMAGE")
    assert tensor is not None and np.array_equal(tensor[0], original)  # lossless: the PNG's own pixels


@pytest.mark.parametrize(
    ("prompt", "status", "code"),
    [
        ("status:400", 400, "backend_rejected"),
        ("status:429", 503, "all_tiers_failed"),
        ("status:500", 503, "all_tiers_failed"),
        ("garbage", 503, "all_tiers_failed"),
    ],
)
def test_upstream_failures_map_to_the_gateways_errors(
    hosted: tuple[HostedUpstream, GatewayProcess], prompt: str, status: int, code: str
) -> None:
    _, gw = hosted
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": prompt}, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    if status == 503:  # the last tier's failure is named
        assert "remote" in r.json()["error"]["message"]


def test_a_slow_upstream_is_answered_within_the_budget(hosted: tuple[HostedUpstream, GatewayProcess]) -> None:
    _, gw = hosted
    t0 = time.monotonic()
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "sleep:5"}, timeout=10)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504 and elapsed < 1.5 + 0.3, (r.status_code, elapsed)
    # and the gateway still serves: the abandoned connection was not put back in the pool
    assert httpx.post(gw.url + "/api/v1/generate", json={"prompt": "after"}, timeout=10).status_code == 200


def test_a_wrong_key_is_not_the_clients_fault(tmp_path: Path) -> None:
    upstream = HostedUpstream(tmp_path, key="sk-right")
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    env = {"HOSTED_URL": upstream.url, "HOSTED_KEY": "sk-wrong"}
    gw = GatewayProcess(routes, "http://127.0.0.1:9", tmp_path / "gateway.log", env=env)
    try:
        r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "all_tiers_failed"
        assert "sk-wrong" not in r.text
    finally:
        gw.stop()
        upstream.stop()
