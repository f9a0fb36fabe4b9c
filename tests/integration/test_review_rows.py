"""Rows of the test review (reviews/tests-2026-12.md, "NOT COVERED") against real
processes: a real Triton, real gateways, a stand-in hosted API.

- README "Tenants": over KServe HTTP a route the tenant may not use is a 403 and a
  tenant over its rate, its daily images or its concurrency is a 429 — each in
  Triton's own error shape (``{"error": "<message>", "code": ...}``), which an
  unmodified ``tritonclient.http`` reads; the concurrency 429 from a real request in
  flight on a slow tier.
- docs/cache.md: purge conditions combine (only the intersection goes);
  ``image_max_age_s`` is the image URL's ``max-age``; a Pillow without AVIF answers
  AVIF requests with a 400, never a 500.
- docs/openai.md: ``steps`` reaches Triton and changes the image; ``stream: true`` with
  ``n`` other than 1 or ``response_format: url`` is refused by name, and so is an
  edit with ``stream: true``; an uploaded picture is bounded at 16 MiB (by name); a
  hosted backend refuses edits with ``400 backend_rejected``.
- docs/rollouts.md: every canary action through the admin API is an audit line.

Three gateways, each shared by the tests of one concern (module scope): tenants in
``keys`` mode, an open one with a cache, a rollout and a hosted tier, and one whose
Python cannot import Pillow's AVIF module (a ``sitecustomize`` on its ``PYTHONPATH``
makes ``PIL._avif`` missing, which is what a Pillow built without libavif looks like).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from image_router.triton import TritonServer
from tests.integration.routes_common import TIERS
from tests.integration.test_cache import inferences
from tests.procs import GatewayProcess, HostedUpstream

pytestmark = pytest.mark.integration

KEYS = {
    "FENCED_KEY": "sk-fenced-0123456789abcdef",
    "RATED_KEY": "sk-rated-0123456789abcdef",
    "DAILY_KEY": "sk-daily-0123456789abcdef",
    "SINGLE_KEY": "sk-single-0123456789abcdef",
}
TENANTS = (
    TIERS
    + """
tenants:
  mode: keys
  tenants:
    fenced: {keys: ["${FENCED_KEY}"], routes: [cheap]}
    rated: {keys: ["${RATED_KEY}"], requests_per_s: 0.2, burst: 2}
    daily: {keys: ["${DAILY_KEY}"], images_per_day: 3}
    single: {keys: ["${SINGLE_KEY}"], max_concurrency: 1}
routes:
  - name: cheap
    match: {intent: cheap}
    model: noop
  - name: other
    match: {intent: other}
    model: noop
  - name: slow
    match: {intent: slow}
    model: preview
    budget_ms: 60000
default_route: {name: main, model: noop, budget_ms: 5000}
env: [FENCED_KEY, RATED_KEY, DAILY_KEY, SINGLE_KEY]
"""
)

IMAGE_MAX_AGE_S = 4321  # not the default (a year): the answer's max-age must be this one
OPEN = """
backends:
  triton: {url: "${TRITON_URL}"}
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "${HOSTED_KEY}"}
models:
  draft: {backend: triton, triton_model: draft, latency_hint_ms: 150}
  noop: {backend: triton, triton_model: noop, latency_hint_ms: 20}
  noop-canary: {backend: triton, triton_model: noop, latency_hint_ms: 20}
  remote: {backend: hosted, remote_model: img-1, latency_hint_ms: 100}
cache: {store: "disk://CACHE_DIR", image_max_age_s: MAX_AGE}
routes:
  - name: pics
    match: {intent: pics}
    model: noop
    cache: {}
  - name: more
    match: {intent: more}
    model: noop-canary
    cache: {}
  - name: steps
    match: {intent: steps}
    model: draft
    budget_ms: 60000
  - name: ab
    match: {intent: ab}
    split:
      - {model: noop, weight: 100}
      - model: noop-canary
        canary: true
        rollout: {steps: [20, 50], interval_s: 3600, analysis: {min_samples: 1000}}
default_route: {name: main, model: noop, budget_ms: 5000}
env: [HOSTED_URL, HOSTED_KEY]
"""

NO_AVIF = """
backends:
  triton: {url: "${TRITON_URL}"}
models:
  noop: {backend: triton, triton_model: noop, latency_hint_ms: 20}
cache: {store: "disk://CACHE_DIR"}
default_route: {name: main, model: noop, budget_ms: 5000, cache: {}}
"""

# Imported first by the AVIF-less gateway's Python (and its encoder workers): Pillow's
# AVIF plugin then finds no ``PIL._avif``, as in a Pillow built without libavif.
SITECUSTOMIZE = """
import importlib.abc
import sys


class _NoAvif(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "PIL._avif":
            raise ModuleNotFoundError("No module named 'PIL._avif'", name=name)
        return None


sys.meta_path.insert(0, _NoAvif())
"""


def _gateway(triton: TritonServer, directory: Path, text: str, env: dict[str, str] | None = None) -> GatewayProcess:
    routes = directory / "routes.yaml"
    routes.write_text(text)
    return GatewayProcess(routes, triton.http_url, directory / "gateway.log", env=env)


@pytest.fixture(scope="module")
def tenants_gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = _gateway(triton, tmp_path_factory.mktemp("tenants"), TENANTS, KEYS)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def open_gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("open")
    upstream = HostedUpstream(directory)
    text = OPEN.replace("CACHE_DIR", str(directory / "cache")).replace("MAX_AGE", str(IMAGE_MAX_AGE_S))
    try:
        gateway = _gateway(triton, directory, text, {"HOSTED_URL": upstream.url, "HOSTED_KEY": "sk-test"})
    except BaseException:
        upstream.stop()
        raise
    yield gateway
    gateway.stop()
    upstream.stop()


@pytest.fixture(scope="module")
def no_avif_gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("no-avif")
    shim = directory / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    probe = "from PIL import features; print(features.check('avif'))"
    seen = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert seen == "False", f"the shim did not hide AVIF from Pillow: {seen}"
    text = NO_AVIF.replace("CACHE_DIR", str(directory / "cache"))
    gateway = _gateway(triton, directory, text, {"PYTHONPATH": path})
    yield gateway
    gateway.stop()


# -- KServe HTTP and tenants (README "Tenants") ------------------------------------------


def _kserve(gw: GatewayProcess, model: str, key: str, prompts: tuple[str, ...] = ("x",)) -> httpx.Response:
    body = {"inputs": [{"name": "PROMPT", "shape": [len(prompts), 1], "datatype": "BYTES", "data": list(prompts)}]}
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    return httpx.post(f"{gw.url}/v2/models/{model}/infer", json=body, headers=headers, timeout=60)


def _triton_shape(r: httpx.Response, status: int, code: str) -> str:
    """The refusal is ``status`` in Triton's own shape (``error`` a string); its message."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body["error"], str) and body["code"] == code, body
    return str(body["error"])


def _tritonclient_status(gw: GatewayProcess, model: str, key: str) -> tuple[str | None, str]:
    """What an unmodified ``tritonclient.http`` sees of a refused infer: status, message."""
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [prompt], headers={"Authorization": f"Bearer {KEYS[key]}"})
    finally:
        client.close()
    return info.value.status(), info.value.message()


def test_kserve_http_answers_a_forbidden_route_403_and_a_rate_429_in_tritons_shape(
    tenants_gw: GatewayProcess,
) -> None:
    """README:188: routes a tenant may not use are a 403, its rate a 429 with
    ``Retry-After`` and the ``x-ratelimit-*`` headers, over ``/v2/models/{m}/infer``."""
    gw = tenants_gw
    assert _kserve(gw, "cheap", "FENCED_KEY").status_code == 200  # the route it may use
    message = _triton_shape(_kserve(gw, "other", "FENCED_KEY"), 403, "forbidden")
    assert "'other'" in message
    status, text = _tritonclient_status(gw, "other", "FENCED_KEY")
    assert status == "403" and "'other'" in text

    # 0.2 requests a second with a burst of 2: two pass, the rest of this burst is refused
    answers = [_kserve(gw, "noop", "RATED_KEY") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429], [r.text for r in answers]
    refused = answers[2]
    assert "rate" in _triton_shape(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert _tritonclient_status(gw, "noop", "RATED_KEY")[0] == "429"


def test_kserve_http_counts_a_batchs_images_against_images_per_day(tenants_gw: GatewayProcess) -> None:
    """README:191: ``images_per_day`` (3) over KServe HTTP counts every PROMPT row: 2
    images pass, 2 more would be 4 (429), 1 more is 3 (200), and then nothing."""
    gw = tenants_gw
    first = _kserve(gw, "noop", "DAILY_KEY", ("a", "b"))
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-remaining-images"] == "1"
    over = _kserve(gw, "noop", "DAILY_KEY", ("c", "d"))
    assert "daily images" in _triton_shape(over, 429, "rate_limited")
    assert over.headers["x-ratelimit-limit-images"] == "3" and int(over.headers["retry-after"]) >= 1
    assert _kserve(gw, "noop", "DAILY_KEY", ("e",)).status_code == 200
    _triton_shape(_kserve(gw, "noop", "DAILY_KEY", ("f",)), 429, "rate_limited")


def _inflight(gw: GatewayProcess, tenant: str) -> int:
    status = httpx.get(gw.url + "/admin/status.json", headers=gw.admin, timeout=10).json()
    return int(next(t for t in status["tenants"] if t["name"] == tenant)["inflight"])


def test_max_concurrency_refuses_a_second_request_while_one_runs_on_a_slow_tier(tenants_gw: GatewayProcess) -> None:
    """README:191, on a real gateway: with ``max_concurrency: 1`` a request sent while
    the tenant's first runs on the slow tier is a 429 over KServe HTTP; once the first
    has finished, the tenant is served again."""
    gw = tenants_gw
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_kserve, gw, "slow", "SINGLE_KEY")
        deadline = time.monotonic() + 30
        while _inflight(gw, "single") != 1:
            assert not running.done(), f"the slow request ended before it was seen in flight: {running.result().text}"
            assert time.monotonic() < deadline, "the slow request was never in flight"
            time.sleep(0.01)
        second = _kserve(gw, "slow", "SINGLE_KEY")
        in_flight_still = not running.done()
        first = running.result()
    assert "concurrency" in _triton_shape(second, 429, "rate_limited")
    assert in_flight_still, "the first request ended before the second was answered: nothing was concurrent"
    assert first.status_code == 200 and first.headers["x-router-model"].startswith("preview"), first.text
    assert int(second.headers["retry-after"]) >= 1
    assert _inflight(gw, "single") == 0
    assert _kserve(gw, "noop", "SINGLE_KEY").status_code == 200  # the slot came back


# -- the cache (docs/cache.md) ---------------------------------------------------------


def _cached(gw: GatewayProcess, prompt: str, intent: str) -> str:
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": prompt, "intent": intent, "seed": 1}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-cache"]


def _stored(gw: GatewayProcess, prompt: str, intent: str) -> None:
    """Made once and then a HIT (the write happens after the answer: polled)."""
    deadline = time.monotonic() + 10
    while _cached(gw, prompt, intent) != "HIT":
        assert time.monotonic() < deadline, f"{prompt!r} on {intent} never became a HIT"
        time.sleep(0.05)


def _purge(gw: GatewayProcess, body: dict[str, str]) -> int:
    r = httpx.post(gw.url + "/admin/cache/purge", json=body, headers=gw.admin, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["removed"])


def test_purge_conditions_combine_and_only_their_intersection_goes(open_gw: GatewayProcess) -> None:
    """docs/cache.md "Purge": conditions combine. Of (pics, noop, apple), (pics, noop,
    pear) and (more, noop-canary, apple), ``route: more`` + ``prompt: pear`` matches
    nothing, and ``model: noop`` + ``prompt: apple`` the first alone."""
    gw = open_gw
    entries = [("apple", "pics"), ("pear", "pics"), ("apple", "more")]
    for prompt, intent in entries:
        _stored(gw, prompt, intent)
    assert _purge(gw, {"route": "more", "prompt": "pear"}) == 0
    assert [_cached(gw, p, i) for p, i in entries] == ["HIT", "HIT", "HIT"]
    assert _purge(gw, {"model": "noop", "prompt": "apple"}) == 1
    assert [_cached(gw, p, i) for p, i in entries] == ["MISS", "HIT", "HIT"]


def test_image_max_age_s_is_the_image_urls_max_age(open_gw: GatewayProcess) -> None:
    """docs/cache.md ``image_max_age_s``: the ``Cache-Control`` of an image URL's answer."""
    gw = open_gw
    r = httpx.post(gw.url + "/v1/images/generations", timeout=30,
                   json={"prompt": "a url picture", "intent": "pics", "response_format": "url"})  # fmt: skip
    assert r.status_code == 200, r.text
    image = httpx.get(r.json()["data"][0]["url"], timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["cache-control"] == f"public, max-age={IMAGE_MAX_AGE_S}, immutable"


def _generate(gw: GatewayProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(gw.url + "/api/v1/generate", json=body, headers=headers, timeout=30)


def _param(r: httpx.Response, status: int = 400) -> str | None:
    assert r.status_code == status, (r.status_code, r.text)
    param: str | None = r.json()["error"]["param"]
    return param


def test_a_pillow_without_avif_answers_avif_requests_400_never_500(
    open_gw: GatewayProcess, no_avif_gw: GatewayProcess
) -> None:
    """docs/cache.md "Formats": the same AVIF requests that a Pillow with AVIF answers
    (the control, ``open_gw``) are a 400 naming ``format`` on a gateway whose Pillow
    has no AVIF module (a real process: see the module docstring), for the body's
    ``format`` and for an image URL's ``.avif``; an ``Accept`` of AVIF alone is no
    500 either, and gets no AVIF."""
    made = _generate(open_gw, {"prompt": "an avif", "format": "avif"})
    assert made.status_code == 200 and made.headers["content-type"] == "image/avif"
    assert _param(_generate(no_avif_gw, {"prompt": "an avif", "format": "avif"})) == "format"
    for gw in (open_gw, no_avif_gw):
        r = httpx.post(gw.url + "/v1/images/generations", json={"prompt": "an avif url", "response_format": "url"},
                       timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        avif_url = r.json()["data"][0]["url"].replace(".png", ".avif")
        answer = httpx.get(avif_url, timeout=30)
        if gw is open_gw:
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/avif"
        else:
            assert _param(answer) == "format"
    negotiated = _generate(no_avif_gw, {"prompt": "an avif"}, accept="image/avif")
    assert negotiated.status_code < 500 and negotiated.headers.get("content-type") != "image/avif"


# -- the OpenAI API (docs/openai.md) ---------------------------------------------------


def test_steps_reach_triton_and_change_the_image(triton: TritonServer, open_gw: GatewayProcess) -> None:
    """docs/openai.md:26: ``steps`` (extra_body) through the gateway to the draft tier:
    the same seed with other steps is another image, with the same steps the same
    image — three generations in Triton, none from a cache."""
    client = openai.OpenAI(base_url=open_gw.url + "/v1", api_key="unused", max_retries=0)
    before = inferences(triton, "draft")

    def image(steps: int) -> str:
        answer = client.images.generate(
            prompt="a lighthouse", extra_body={"intent": "steps", "seed": 5, "steps": steps}
        )
        assert answer.data is not None
        return str(answer.data[0].b64_json)

    two, six, two_again = image(2), image(6), image(2)
    assert inferences(triton, "draft") - before == 3
    assert two == two_again
    assert two != six


def _png(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def _edit(gw: GatewayProcess, data: dict[str, str], files: dict[str, bytes], path: str = "edits") -> httpx.Response:
    parts = {name: (f"{name}.png", content, "image/png") for name, content in files.items()}
    return httpx.post(f"{gw.url}/v1/images/{path}", data={"prompt": "blue", **data}, files=parts, timeout=60)


def test_stream_with_n_or_url_is_refused_by_name_and_edits_are_not_streamed(open_gw: GatewayProcess) -> None:
    """docs/openai.md:22-23 and "Edits and variations": ``stream: true`` with ``n`` other
    than 1, or with ``response_format: url``, is a 400 naming that field (the SDK's
    ``BadRequestError.param``); an edit with ``stream: true`` is a 400 naming ``stream``."""
    gw = open_gw
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="x", stream=True, n=2)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="x", stream=True, response_format="url")
    assert info.value.param == "response_format"
    streamed = httpx.post(gw.url + "/v1/images/generations", json={"prompt": "x", "stream": True}, timeout=30)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    sse = {"accept": "text/event-stream"}
    assert _param(_generate(gw, {"prompt": "x", "n": 2}, **sse)) == "n"

    assert _edit(gw, {}, {"image": _png()}).status_code == 200  # the same edit, not streamed
    assert _param(_edit(gw, {"stream": "true"}, {"image": _png()})) == "stream"
    assert _param(_edit(gw, {"stream": "true"}, {"image": _png()}, "variations")) == "stream"


MIB16 = 16 << 20


def test_an_uploaded_picture_is_bounded_at_16_mib_by_name(open_gw: GatewayProcess) -> None:
    """docs/openai.md "Edits": at most 16 MiB a picture, the whole body under its 32 MiB
    bound: exactly 16 MiB (a PNG with trailing bytes Pillow ignores) is served, one byte
    more is a 413 naming the part (``image``, or ``mask``)."""
    gw = open_gw
    png = _png()
    exactly = png + b"\0" * (MIB16 - len(png))
    assert _edit(gw, {}, {"image": exactly}).status_code == 200
    over = _edit(gw, {}, {"image": exactly + b"\0"})
    assert _param(over, 413) == "image" and over.json()["error"]["code"] == "payload_too_large"
    mask = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(mask, format="PNG")
    big_mask = mask.getvalue() + b"\0" * (MIB16 + 1 - len(mask.getvalue()))
    assert _param(_edit(gw, {}, {"image": png, "mask": big_mask}), 413) == "mask"


def test_a_hosted_backend_refuses_edits_and_variations_with_backend_rejected(open_gw: GatewayProcess) -> None:
    """docs/openai.md "Edits and variations": a hosted backend refuses them, a 400
    ``backend_rejected`` naming the picture; the same backend makes generations."""
    gw = open_gw
    made = httpx.post(gw.url + "/v1/images/generations", json={"prompt": "x", "model": "remote"}, timeout=30)
    assert made.status_code == 200, made.text
    for path in ("edits", "variations"):
        r = _edit(gw, {"model": "remote"}, {"image": _png()}, path)
        assert _param(r) == "image" and r.json()["error"]["code"] == "backend_rejected", r.text


# -- rollouts (docs/rollouts.md) -------------------------------------------------------


def test_every_canary_action_through_the_admin_api_is_an_audit_line(open_gw: GatewayProcess) -> None:
    """docs/rollouts.md:190-191: pause, resume, promote and abort through
    ``POST /admin/canary/{route}/{action}`` each write ``{"audit": "canary <action>"}``
    beside the access log, with the route and what the rollout became."""
    gw = open_gw
    deadline = time.monotonic() + 15
    while httpx.get(gw.url + "/admin/canary/ab", headers=gw.admin, timeout=10).json().get("status") != "running":
        assert time.monotonic() < deadline, "the rollout never started"
        time.sleep(0.1)
    expected = [("pause", "paused"), ("resume", "running"), ("promote", "promoted"), ("abort", "rolled_back")]
    weights = []
    for action, status in expected:
        r = httpx.post(f"{gw.url}/admin/canary/ab/{action}", headers=gw.admin, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == status, r.text
        weights.append(r.json()["weight"])

    def audited() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith('{"ts"')]
        return [line for line in lines if str(line.get("audit", "")).startswith("canary ")]

    deadline = time.monotonic() + 10
    while len(audited()) < len(expected):
        assert time.monotonic() < deadline, f"canary audit lines: {audited()}"
        time.sleep(0.1)
    lines = audited()
    assert [(line["audit"], line["route"], line["status"], line["auth"]) for line in lines] == [
        (f"canary {action}", "ab", status, "bearer") for action, status in expected
    ]
    assert [line["weight"] for line in lines] == weights  # the live weight the API answered
