"""docs/openai.md "Progressive previews", the two promises about a stream that does not
end well, with real processes: when the routed generation fails outright after a
preview was sent, that preview becomes the completed image (``router_error`` says why);
and a client that disconnects cancels all of it — checked in Triton's own statistics,
not the gateway's word: the seconds each abandoned generation spent there. (Triton
counts a request its client cancelled under ``success`` like a made one, so the count
alone cannot tell them apart.)"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient

from image_router.triton import TritonServer
from tests.procs import GatewayProcess, HostedUpstream

pytestmark = pytest.mark.integration

Start = Callable[..., GatewayProcess]

# The routed tier is a hosted one whose upstream the test stops (SIGSTOP) and resumes:
# the routed generation then fails (a 400: the request's own fault, so no fallback)
# exactly when the test lets it — after the preview was sent, with no timing assumption.
REMOTE_ROUTES = """
backends:
  triton: {url: "${TRITON_URL}"}
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "${HOSTED_KEY}"}
models:
  draft: {backend: triton, triton_model: draft, latency_hint_ms: 150}
  remote: {backend: hosted, remote_model: img-1, latency_hint_ms: 100}
routes:
  - name: remote-first
    match: {intent: remote-first}
    model: remote
    budget_ms: 60000
    fallback: [draft]
default_route: {name: default, model: draft, budget_ms: 5000}
env: [HOSTED_URL, HOSTED_KEY]
"""

# Triton over gRPC: only then does work the gateway abandons stop in Triton (README).
# The draft tier makes its 64x64 and upscales it, so its preview comes in a fraction of
# the time the preview and quality tiers take over their 256x256.
GRPC_ROUTES = """
backends:
  triton: {url: "${TRITON_URL}", protocol: grpc, grpc_urls: ["${TRITON_GRPC_URL}"]}
models:
  draft: {backend: triton, triton_model: draft, latency_hint_ms: 150, native_side: 64}
  preview: {backend: triton, triton_model: preview, latency_hint_ms: 2500}
  quality: {backend: triton, triton_model: quality, latency_hint_ms: 3500}
routes:
  - name: patient
    match: {intent: patient}
    model: quality
    budget_ms: 60000
    fallback: [preview, draft]
    resize: upscale
default_route: {name: default, model: draft, budget_ms: 5000}
"""


@pytest.fixture()
def upstream(tmp_path: Path) -> Iterator[HostedUpstream]:
    server = HostedUpstream(tmp_path)
    yield server
    server.stop()


def _wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_routed_generation_failing_after_a_preview_completes_with_that_preview(
    start_gateway: Start, upstream: HostedUpstream
) -> None:
    gw = start_gateway(REMOTE_ROUTES, env={"HOSTED_URL": upstream.url, "HOSTED_KEY": "sk-test"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    os.kill(upstream.process.pid, signal.SIGSTOP)  # the kernel still accepts its connections
    try:
        stream = client.images.generate(
            prompt="status:400", stream=True, partial_images=1, extra_body={"intent": "remote-first"}
        )
        events = iter(stream)
        preview = next(events)
        assert preview.type == "image_generation.partial_image", preview
        assert (preview.model_extra or {})["router_model"].startswith("draft"), preview
    finally:
        os.kill(upstream.process.pid, signal.SIGCONT)  # now the routed tier answers its 400
    rest = list(events)
    assert upstream.last_request().get("prompt") == "status:400", "the routed tier was asked, after the preview"
    assert [e.type for e in rest] == ["image_generation.completed"], rest
    completed = rest[0]
    extra = completed.model_extra or {}
    assert completed.b64_json == preview.b64_json, "the preview is the completed image"
    assert extra["router_error"] == "backend_rejected", extra
    assert extra["router_model"] == (preview.model_extra or {})["router_model"]
    assert extra["router_downgraded"] is True and extra["router_route"] == "remote-first"


def _triton_ended(triton: TritonServer, model: str) -> tuple[int, float]:
    """Requests Triton has ended for ``model`` (made or failed; a request its client
    cancelled is among them) and the seconds they spent in it, all together."""
    stats = httpx.get(f"{triton.http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    ended = [s["inference_stats"][kind] for s in stats for kind in ("success", "fail")]
    return sum(int(e["count"]) for e in ended), sum(int(e["ns"]) for e in ended) / 1e9


def _whole_images(triton: TritonServer, models: tuple[str, ...], prompt: str, seed: int, side: int) -> dict[str, float]:
    """Seconds Triton spends on one whole image on each of ``models``, asked directly and
    at the same time (as a stream runs its tiers side by side)."""
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"), concurrency=len(models))
    inputs = []
    for name, dtype, value in (("PROMPT", "BYTES", np.array([[prompt.encode()]], dtype=object)),
                               ("SEED", "INT64", np.array([[seed]], dtype=np.int64)),
                               ("WIDTH", "INT32", np.array([[side]], dtype=np.int32)),
                               ("HEIGHT", "INT32", np.array([[side]], dtype=np.int32))):  # fmt: skip
        tensor = httpclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    before = {model: _triton_ended(triton, model) for model in models}
    for pending in [client.async_infer(model, inputs) for model in models]:
        pending.get_result()
    client.close()
    after = {model: _triton_ended(triton, model) for model in models}
    assert all(after[m][0] == before[m][0] + 1 for m in models), (before, after)
    return {model: after[model][1] - before[model][1] for model in models}


def test_a_client_that_disconnects_cancels_the_routed_generation_and_the_previews(
    start_gateway: Start, triton: TritonServer
) -> None:
    """The client goes as soon as the first preview (draft's) arrives, while the second
    preview (the preview tier) and the routed image (quality) are generating. Each must
    end in Triton within about a step, not after its whole image: Triton's statistics
    give the seconds each spent, set against a whole image of the same request asked of
    Triton directly (over HTTP Triton would finish both; README "Triton over gRPC")."""
    prompt, seed = "a harbour at dusk", 4
    whole = _whole_images(triton, ("preview", "quality"), prompt, seed, 256)
    gw = start_gateway(GRPC_ROUTES)
    before = {model: _triton_ended(triton, model) for model in ("preview", "quality")}
    body = {"prompt": prompt, "seed": seed, "size": "256x256", "stream": True, "partial_images": 2, "intent": "patient"}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", gw.url + "/v1/images/generations", json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                assert event["type"] == "image_generation.partial_image" and event["router_model"].startswith("draft")
                break
        # leaving the block closes the connection: the client is gone

    def ended() -> bool:
        return all(_triton_ended(triton, model)[0] > before[model][0] for model in before)

    _wait_for(ended, "Triton to end the abandoned requests", 60)
    for model, (count, seconds) in before.items():
        now_count, now_seconds = _triton_ended(triton, model)
        spent = now_seconds - seconds
        assert now_count == count + 1, (model, count, now_count)
        assert spent < 0.5 * whole[model], f"{model} ran {spent:.2f} s for a gone client (whole: {whole[model]:.2f} s)"
