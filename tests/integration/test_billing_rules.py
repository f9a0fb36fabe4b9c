"""A budget's rules through a real gateway on a real Triton (SQLite state, a disk
cache): ``warn_at`` and ``downgrade_at`` (brownout) as the spend grows, an exhausted
tenant still served what is stored (charged the hit price while it fits, then free)
while anything new is refused, and ``usage`` in edits' and variations' answers.

Prices are per image only and ``quote_margin`` is 1, so a reservation equals what its
request costs and every share is exact whether or not a settlement has landed yet.
Each test has a tenant of its own on one gateway."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from image_router.triton import TritonServer
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

KEYS = {name: f"{name}-0123456789abcdef" for name in ("brown", "acme", "editor")}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def routes(cache_dir: str) -> str:
    return f"""
backends:
  triton: {{url: "${{TRITON_URL}}"}}
billing: {{currency: USD, gpu_hour_price: 0, quote_margin: 1.0, cache_hit_price: 0.001}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150, price: {{per_image: 0.01}}}}
  noop: {{backend: triton, triton_model: noop, latency_hint_ms: 20, price: {{per_image: 0.001}}}}
cache: {{store: "disk://{cache_dir}", ttl_s: 600}}
default_route: {{name: default, model: draft, fallback: [noop], budget_ms: 30000, cache: {{}}}}
tenants:
  mode: keys
  tenants:
    brown:
      keys: ["{KEYS["brown"]}"]
      budget: {{limits: [{{per: day, amount: 0.05}}], warn_at: 0.3, downgrade_at: 0.5}}
    acme:
      keys: ["{KEYS["acme"]}"]
      budget: {{limits: [{{per: day, amount: 0.012}}]}}
    editor:
      keys: ["{KEYS["editor"]}"]
      budget: {{limits: [{{per: day, amount: 1}}]}}
"""


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("billing-rules")
    path = directory / "routes.yaml"
    path.write_text(routes(str(directory / "cache")))
    gateway = GatewayProcess(path, triton.http_url, directory / "gateway.log")
    yield gateway
    gateway.stop()


def generate(gw: GatewayProcess, tenant: str, prompt: str, seed: int) -> httpx.Response:
    body = {"prompt": prompt, "seed": seed, "response": "json"}
    return httpx.post(gw.url + "/api/v1/generate", json=body, headers=auth(tenant), timeout=60)


def test_warn_then_brownout_serves_the_cheaper_tier_tagged_budget(gw: GatewayProcess) -> None:
    """$0.05/day, warn_at 0.3, downgrade_at 0.5, on_exhausted reject: draft ($0.01) at
    0 % and 20 % used (ok), at 40 % with ``X-Router-Budget: warn``; at 60 % only the
    fallback tier: noop ($0.001), ``X-Router-Fallback: draft:budget``, ``brownout``."""
    seen, answers = [], []
    for i in range(5):
        r = generate(gw, "brown", f"a brown fox {i}", i)
        assert r.status_code == 200, r.text
        answers.append(r)
        model = r.headers["x-router-model"].split("@")[0]
        seen.append((model, r.headers.get("x-router-fallback", ""), r.headers["x-router-budget"]))
        assert r.json()["usage"]["cost"] == {"draft": 0.01, "noop": 0.001}[model]
    assert seen == [
        ("draft", "", "ok"),
        ("draft", "", "ok"),
        ("draft", "", "warn"),
        ("noop", "draft:budget", "brownout"),
        ("noop", "draft:budget", "brownout"),
    ], seen
    # the third draft's reservation: 0.05 - three drafts' 0.01 (a draft's quote is its cost)
    assert answers[2].headers["x-ratelimit-remaining-spend"] == "0.020000"


def test_an_exhausted_tenant_still_gets_what_is_stored(gw: GatewayProcess) -> None:
    """$0.012/day, reject: one draft ($0.01, published as a URL) leaves $0.002, so a new
    request is 429 insufficient_quota; the same seeded request again is a 200 HIT at the
    hit price ($0.001) twice, then — nothing left for even the hit price — free; the URL
    still serves."""
    made = httpx.post(
        gw.url + "/v1/images/generations",
        json={"prompt": "a lighthouse", "seed": 7, "response_format": "url"},
        headers=auth("acme"),
        timeout=60,
    )
    assert made.status_code == 200 and made.headers["x-cache"] == "MISS", made.text
    assert made.json()["usage"]["cost"] == 0.01
    url = made.json()["data"][0]["url"]

    new = generate(gw, "acme", "a new lighthouse", 8)
    assert new.status_code == 429 and new.json()["error"]["code"] == "insufficient_quota", new.text
    assert new.headers["x-should-retry"] == "false" and new.headers["x-router-budget"] == "exhausted"

    deadline = time.monotonic() + 10
    while True:  # the store write after the first answer is in the background
        hit = generate(gw, "acme", "a lighthouse", 7)
        if hit.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    costs = []
    for answer in (hit, generate(gw, "acme", "a lighthouse", 7), generate(gw, "acme", "a lighthouse", 7)):
        assert answer.status_code == 200, answer.text
        assert (answer.headers["x-cache"], answer.headers["x-router-budget"]) == ("HIT", "exhausted")
        assert answer.headers["x-router-model"].split("@")[0] == "draft"
        usage = answer.json()["usage"]
        assert (usage["cached_images"], usage["compute_source"]) == (1, "cache")
        costs.append(usage["cost"])
    assert costs == [0.001, 0.001, 0.0], costs
    assert float(answer.headers["x-ratelimit-remaining-spend"]) == 0.0

    again = generate(gw, "acme", "a new lighthouse", 8)
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
    fetched = httpx.get(url, headers=auth("acme"), timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"


def picture() -> bytes:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None].repeat(64, 0).repeat(3, 2)
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("path", ["edits", "variations"])
def test_edits_and_variations_answer_with_usage(gw: GatewayProcess, path: str) -> None:
    """The same ``usage`` object as generations, agreeing with ``X-Router-Usage``."""
    files = {"image": ("in.png", picture(), "image/png")}
    data = {"prompt": "a sketch in blue", "seed": "4"} if path == "edits" else {"seed": "4"}
    r = httpx.post(f"{gw.url}/v1/images/{path}", data=data, files=files, headers=auth("editor"), timeout=60)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert (usage["images"], usage["cached_images"], usage["total_tokens"]) == (1, 0, 0)
    assert usage["compute_source"] == "model" and usage["compute_s"] > 0
    assert (usage["cost"], usage["currency"]) == (0.01, "USD")
    assert usage["cost_details"] == {"compute": 0.0, "per_image": 0.01, "cache_hits": 0.0}
    assert r.headers["x-router-usage"].startswith("images=1, cached=0, compute-ms=")
    assert r.headers["x-router-usage"].endswith('cost=0.010000, currency="USD"')
    assert r.headers["x-router-budget"] == "ok"
