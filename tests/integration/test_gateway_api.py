"""The gateway in front of the real Triton: routing, tags and the three protocols,
each exercised with the client people really use."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from image_router.triton import TritonServer
from image_router.triton.launcher import free_port
from tests.integration.routes_common import ROUTING
from tests.procs import GatewayProcess, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(triton.http_url, tmp_path_factory.mktemp("gw-api"), ROUTING) as gateway:
        yield gateway


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


@pytest.mark.parametrize(
    ("body", "headers", "route", "model", "size"),
    [
        ({"prompt": "a quick SKETCH of a boat"}, {}, "sketch", "draft@1", (64, 64)),
        ({"prompt": "a boat"}, {"X-Beta": "yes"}, "beta", "noop@1", (8, 8)),
        ({"prompt": "a boat", "intent": "quality"}, {}, "hq", "quality@1", (256, 256)),
        ({"prompt": "a boat"}, {"X-Intent": "quality"}, "hq", "quality@1", (256, 256)),
        ({"prompt": "a boat"}, {}, "default", "preview@1", (128, 128)),
        ({"prompt": "a boat", "model": "draft"}, {}, "model:draft", "draft@1", (64, 64)),
    ],
)
def test_routes_by_regex_intent_header_and_alias_and_tags_the_answer(
    gw: GatewayProcess, body: dict[str, str], headers: dict[str, str], route: str, model: str, size: tuple[int, int]
) -> None:
    r = httpx.post(gw.url + "/api/v1/generate", json={**body, "seed": 1}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert png_size(r.content) == size
    assert r.headers["x-router-route"] == route
    assert r.headers["x-router-model"] == model
    assert r.headers["x-router-attempts"] == "1"
    assert r.headers["x-router-canary"] == "false"
    assert "total;dur=" in r.headers["server-timing"]
    assert len(r.headers["x-request-id"]) >= 16


def test_json_response_reports_seeds_and_is_deterministic(gw: GatewayProcess) -> None:
    body = {"prompt": "a sketch of a cat", "seed": 11, "n": 2, "response": "json"}
    a = httpx.post(gw.url + "/api/v1/generate", json=body, timeout=30).json()
    b = httpx.post(gw.url + "/api/v1/generate", json=body, timeout=30).json()
    assert [i["seed"] for i in a["images"]] == [11, 12]
    assert a["images"] == b["images"]
    assert a["images"][0]["b64_png"] != a["images"][1]["b64_png"]
    assert a["model"] == "draft@1" and a["route"] == "sketch"


def test_openai_sdk_unchanged(gw: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    result = client.images.generate(prompt="a sketch of a lighthouse", n=2, response_format="b64_json")
    assert len(result.data) == 2
    assert all(png_size(base64.b64decode(d.b64_json or "")) == (64, 64) for d in result.data)
    raw = client.images.with_raw_response.generate(
        prompt="a lighthouse", model="preview", size="64x64", response_format="b64_json"
    )
    assert raw.headers["x-router-model"] == "preview@1"
    assert png_size(base64.b64decode(raw.parse().data[0].b64_json or "")) == (64, 64)
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(prompt="x", model="dall-e-9")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.images.generate(prompt="x", response_format="url")


def test_unmodified_tritonclient_through_the_gateway(gw: GatewayProcess, triton: TritonServer) -> None:
    """tritonclient.http works against the gateway; the image equals Triton's own."""
    via = httpclient.InferenceServerClient(gw.url.removeprefix("http://"), network_timeout=60)
    direct = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"), network_timeout=60)
    assert via.is_server_live() and via.is_server_ready()
    assert via.is_model_ready("draft") and via.is_model_ready("hq")
    meta = via.get_model_metadata("hq")
    assert meta["name"] == "hq" and {i["name"] for i in meta["inputs"]} >= {"PROMPT", "SEED"}

    def inputs() -> list[httpclient.InferInput]:
        p = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
        p.set_data_from_numpy(np.array([[b"a sketch of a boat"]], dtype=object))
        s = httpclient.InferInput("SEED", [1, 1], "INT64")
        s.set_data_from_numpy(np.array([[3]], dtype=np.int64))
        return [p, s]

    expected = direct.infer("draft", inputs()).as_numpy("IMAGE")
    for binary in (True, False):
        out = [httpclient.InferRequestedOutput("IMAGE", binary_data=binary)]
        result = via.infer("draft", inputs(), outputs=out)
        np.testing.assert_array_equal(result.as_numpy("IMAGE"), expected)
        assert result.get_response()["model_name"] == "draft"
    # the logical name "auto" routes by the prompt read from the PROMPT tensor
    routed = via.infer("auto", inputs())
    assert routed.as_numpy("IMAGE").shape == (1, 64, 64, 3)
    with pytest.raises(InferenceServerException) as info:
        via.infer("no-such-model", inputs())
    assert info.value.status() == "404"
    via.close()
    direct.close()


def test_what_tritons_own_tools_call_besides_infer(gw: GatewayProcess) -> None:
    """config and statistics under logical names, Triton's request parameters,
    compressed bodies both ways, and what served the request in the answer."""
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"), network_timeout=60)
    config = client.get_model_config("sketch")  # a route name resolves to its model
    assert config["name"] == "sketch" and config["backend"] == "python" and config["max_batch_size"] > 0
    stats = client.get_inference_statistics("draft")["model_stats"]
    assert stats and {s["name"] for s in stats} == {"draft"}
    everything = httpx.get(gw.url + "/v2/models/stats", timeout=30).json()["model_stats"]
    assert {"draft", "quality", "sketch"} <= {s["name"] for s in everything}

    p = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[b"a sketch of a gull"]], dtype=object))
    for compression in ("gzip", "deflate"):
        result = client.infer(
            "auto",
            [p],
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
            priority=1,
            timeout=5_000_000,
        )
        assert result.as_numpy("IMAGE") is not None
        assert result.get_response()["parameters"]["router_route"] == "sketch"
        assert result.get_response()["parameters"]["router_model"] == "draft"
        assert result.get_response()["parameters"]["router_priority"] == "1"  # Triton's priority, honoured
    client.close()
    # the answer really is compressed on Accept-Encoding (tritonclient would read a plain one too)
    request = {"inputs": [{"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["a sketch of a gull"]}]}
    for encoding in ("gzip", "deflate"):
        raw = httpx.post(
            gw.url + "/v2/models/auto/infer", json=request, headers={"Accept-Encoding": encoding}, timeout=30
        )
        assert raw.status_code == 200 and raw.headers.get("content-encoding") == encoding, raw.headers
        assert raw.json()["parameters"]["router_route"] == "sketch"  # httpx inflated it
    plain = httpx.post(
        gw.url + "/v2/models/auto/infer", json=request, headers={"Accept-Encoding": "identity"}, timeout=30
    )
    assert plain.status_code == 200 and "content-encoding" not in plain.headers

    import gzip

    body = json.dumps({"inputs": [{"name": "PROMPT", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode()
    bomb = gzip.compress(body[:-1] + b" " * (4 << 20) + body[-1:])  # 4 MiB of spaces inflate from ~4 KiB
    r = httpx.post(gw.url + "/v2/models/draft/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    r = httpx.post(gw.url + "/v2/models/draft/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["error"]
    r = httpx.post(gw.url + "/v2/models/draft/infer", content=body, headers={"Content-Encoding": "br"})
    assert r.status_code == 400 and "Content-Encoding" in r.json()["error"]
    bad = json.dumps({"inputs": json.loads(body)["inputs"], "parameters": {"timeout": -5}}).encode()
    r = httpx.post(gw.url + "/v2/models/draft/infer", content=bad)
    assert r.status_code == 400 and "parameters.timeout" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "code"),
    [
        ("/api/v1/generate", b"{not json", {"content-type": "application/json"}, 400, "invalid_request"),
        ("/api/v1/generate", b'{"prompt": 5}', {"content-type": "application/json"}, 400, "invalid_request"),
        ("/api/v1/generate", b'{"prompt": "x", "steps": "many"}', {}, 400, "invalid_request"),
        ("/api/v1/generate", b'{"prompt": "x", "bogus": 1}', {}, 400, "invalid_request"),
        ("/api/v1/generate", b'{"prompt": "x"}', {"content-type": "application/xml"}, 415, "unsupported_media_type"),
        ("/api/v1/generate", b"x" * (2 << 20), {}, 413, "payload_too_large"),
        ("/api/v1/generate", b'{"prompt": "x", "width": 100000}', {}, 400, "invalid_request"),
        ("/v1/images/generations", b'{"prompt": "x", "size": "huge"}', {}, 400, "invalid_request"),
        ("/v1/images/generations", b'{"prompt": "x", "n": 99}', {}, 400, "invalid_request"),
        ("/api/v1/generate", b'{"prompt": "x", "model": "../../etc/passwd"}', {}, 404, "model_not_found"),
        ("/nope", b"", {}, 404, "not_found"),
    ],
)
def test_bad_input_gets_a_clear_error(
    gw: GatewayProcess, path: str, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    r = httpx.post(gw.url + path, content=content, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text


def test_model_rejection_passes_through_as_400(gw: GatewayProcess) -> None:
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a sketch", "width": 60}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "backend_rejected"
    assert "WIDTH: 60 is not a multiple of 8" in r.json()["error"]["message"]


def test_v2_errors_keep_tritons_shape(gw: GatewayProcess) -> None:
    r = httpx.post(gw.url + "/v2/models/draft/infer", content=b"\x00\x01garbage", timeout=30)
    assert r.status_code == 400
    assert isinstance(r.json()["error"], str) and r.json()["code"] == "invalid_request"
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_health_endpoints(gw: GatewayProcess) -> None:
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_is_503_when_no_backend_answers(tmp_path: Path) -> None:
    """Readiness means a backend answers, not merely that the process is up: a gateway
    whose only Triton is unreachable must not receive traffic."""
    routes = tmp_path / "routes.yaml"
    routes.write_text('backends: {triton: {url: "${TRITON_URL}"}}\ndefault_route: {model: noop, budget_ms: 500}\n')
    dead = GatewayProcess(routes, f"http://127.0.0.1:{free_port()}", tmp_path / "gateway.log")
    try:
        assert httpx.get(dead.url + "/healthz").status_code == 200  # alive ...
        assert httpx.get(dead.url + "/readyz").status_code == 503  # ... but not ready
    finally:
        dead.stop()


def test_request_id_is_echoed(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


Start = Callable[..., GatewayProcess]


def test_secrets_never_reach_the_admin_api_errors_or_logs(start_gateway: Start) -> None:
    routes = ROUTING.replace(
        "backends:\n",
        'backends:\n  hosted: {type: openai, base_url: "http://127.0.0.1:9", api_key: "${HOSTED_KEY}"}\n',
    ).replace("  noop-canary:", "  remote: {backend: hosted, remote_model: img-1}\n  noop-canary:")
    gw = start_gateway(routes + "env: [HOSTED_KEY]\n", env={"HOSTED_KEY": "sk-live-DO-NOT-LEAK"})
    config = httpx.get(gw.url + "/admin/config", headers=gw.admin).text
    assert "hosted" in config and "sk-live-DO-NOT-LEAK" not in config
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x", "model": "remote"}, timeout=30)
    assert r.status_code in (503, 504) and "sk-live" not in r.text
    gw.stop()
    assert "sk-live-DO-NOT-LEAK" not in gw.log.read_text()


def test_kserve_prompt_length_is_limited(gw: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    p = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[b"x" * 4001]], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        client.infer("draft", [p])
    client.close()
    assert info.value.status() == "400" and "longer than 4000" in info.value.message()


def test_replicas_discovered_from_dns_serve(start_gateway: Start, triton: TritonServer) -> None:
    """``discover: dns`` against a real Triton: the host is resolved to its addresses (a
    headless Service's pods in Kubernetes; here localhost), each one a replica."""
    import time

    port = triton.http_url.rsplit(":", 1)[1]
    routes = (
        "backends:\n"
        f'  triton: {{url: "http://localhost:{port}", discover: dns, discover_interval_ms: 200}}\n'
        "models:\n  noop: {backend: triton, triton_model: noop, latency_hint_ms: 20}\n"
        "default_route: {model: noop, budget_ms: 5000}\n"
    )
    gw = start_gateway(routes, name="discover.yaml")
    deadline = time.monotonic() + 10
    urls: list[str] = []
    while time.monotonic() < deadline:
        assert httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x"}, timeout=10).status_code == 200
        config = httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10).json()
        urls = [r["url"] for r in config["backends"]["triton"]]
        if f"http://127.0.0.1:{port}" in urls:
            break
        time.sleep(0.2)
    assert f"http://127.0.0.1:{port}" in urls and f"http://localhost:{port}" not in urls, urls
    for _ in range(5):  # an address nothing listens on (::1, where localhost has one) is taken out
        assert httpx.post(gw.url + "/api/v1/generate", json={"prompt": "y"}, timeout=10).status_code == 200


def test_admin_sessions_expire_and_admin_actions_are_audited(start_gateway: Start) -> None:
    import json as json_module
    import time

    from image_router.http.admin_api import SESSION_COOKIE, session_value
    from tests.procs import ADMIN_TOKEN

    gw = start_gateway(ROUTING, name="admin.yaml")
    signed_in = httpx.post(
        gw.url + "/admin/login",
        content=f"token={ADMIN_TOKEN}",
        headers={"content-type": "application/x-www-form-urlencoded", "x-forwarded-proto": "https"},
    )
    cookie = signed_in.headers["set-cookie"].lower()
    assert signed_in.status_code == 303 and "max-age=43200" in cookie and "secure" in cookie and "httponly" in cookie
    plain = httpx.post(gw.url + "/admin/login", content=f"token={ADMIN_TOKEN}",
                       headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert "secure" not in plain.headers["set-cookie"].lower(), "Secure only behind TLS"
    fresh = session_value(ADMIN_TOKEN, int(time.time()) + 60)
    stale = session_value(ADMIN_TOKEN, int(time.time()) - 1)
    assert httpx.get(gw.url + "/admin/status.json", cookies={SESSION_COOKIE: fresh}).status_code == 200
    assert httpx.get(gw.url + "/admin/status.json", cookies={SESSION_COOKIE: stale}).status_code == 401
    tampered = fresh[:-1] + ("1" if fresh.endswith("0") else "0")  # always a different signature
    assert httpx.get(gw.url + "/admin/status.json", cookies={SESSION_COOKIE: tampered}).status_code == 401
    assert httpx.post(gw.url + "/admin/reload", headers=gw.admin).status_code == 200
    gw.stop()
    lines = [json_module.loads(line) for line in gw.log.read_text().splitlines() if line.startswith('{"ts"')]
    actions = [(line["audit"], line["auth"]) for line in lines if "audit" in line]
    assert actions == [("sign-in", "session"), ("sign-in", "session"), ("reload", "bearer")], actions
    assert ADMIN_TOKEN not in gw.log.read_text()
