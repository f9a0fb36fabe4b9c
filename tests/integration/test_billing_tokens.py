"""A hosted tier priced by its upstream's tokens, against a real HTTP upstream process
(``tests/hosted_upstream.py``, its answers given a GPT-image ``usage``).

The upstream's token counts reach the client unchanged in ``usage``; the cost is the
tokens at their prices — with output tokens all priced as image tokens when the
upstream leaves ``output_tokens_details`` out (LiteLLM #31142) — and the ledger counts
exactly what the answers said. An answer without ``usage`` is billed per image."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.procs import ROOT, GatewayProcess

pytestmark = pytest.mark.integration

# the fake upstream, with a `usage` added to each generation it answers: 40 text tokens
# in, 1056 out; a prompt starting "split:" also sends output_tokens_details (1000 image +
# 56 text), one starting "bare:" sends no usage at all
WRAPPER = r"""
import json, sys
root = sys.argv[1]
sys.path.insert(0, root + "/tests")
import hosted_upstream as fake

answer = fake.Handler._answer

def with_usage(self, status, body):
    sent = json.loads(fake.LAST_REQUEST or b"{}")
    prompt = str(sent.get("prompt", ""))
    if status == 200 and self.command == "POST" and not prompt.startswith("bare:"):
        out = json.loads(body)
        out["usage"] = {"input_tokens": 40, "input_tokens_details": {"text_tokens": 40, "image_tokens": 0},
                        "output_tokens": 1056, "total_tokens": 1096}
        if prompt.startswith("split:"):
            out["usage"]["output_tokens_details"] = {"image_tokens": 1000, "text_tokens": 56}
        body = fake.LAST = json.dumps(out).encode()
    answer(self, status, body)

fake.Handler._answer = with_usage
sys.argv = ["hosted_upstream", "--port", "0"]
fake.main()
"""

ROUTES = """
backends:
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "sk-test"}
billing: {currency: USD, quote_margin: 1.0}
models:
  remote:
    backend: hosted
    remote_model: gpt-image-1
    latency_hint_ms: 100
    price:
      per_image: 0.063
      tokens: {input_text: 5.0e-6, input_image: 1.0e-5, output_image: 4.0e-5, output_text: 1.0e-5}
default_route: {model: remote, budget_ms: 5000}
env: [HOSTED_URL]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("billing-tokens")
    log = open(directory / "upstream.log", "wb")  # noqa: SIM115 - closed below
    upstream = subprocess.Popen([sys.executable, "-c", WRAPPER, str(ROOT)], stdout=subprocess.PIPE, stderr=log)
    assert upstream.stdout is not None
    line = upstream.stdout.readline().decode()
    try:
        assert line.startswith("listening on "), (directory / "upstream.log").read_text()
        routes = directory / "routes.yaml"
        routes.write_text(ROUTES)
        env = {"HOSTED_URL": f"http://127.0.0.1:{int(line.split()[-1])}/v1"}
        gateway = GatewayProcess(routes, "http://127.0.0.1:9", directory / "gateway.log", env=env)
        yield gateway
        gateway.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)
        upstream.stdout.close()
        log.close()


def test_output_without_details_is_priced_as_image_tokens_and_passed_through(gw: GatewayProcess) -> None:
    """40 text tokens in, 1056 out with no split: 40 x 5e-6 + 1056 x 4e-5 = 0.04244
    (at the text rate the output would be 0.01056): the token fields are the upstream's,
    the openai SDK parses them, and no output split is invented."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
    answer = client.images.generate(model="remote", prompt="a lighthouse", size="64x64")
    usage = answer.model_dump()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (40, 1056, 1096)
    assert usage["input_tokens_details"] == {"text_tokens": 40, "image_tokens": 0}
    assert usage.get("output_tokens_details") is None
    body = httpx.post(
        gw.url + "/v1/images/generations", json={"model": "remote", "prompt": "a lighthouse", "size": "64x64"}
    ).json()["usage"]
    assert body["cost"] == pytest.approx(0.04244, abs=1e-9), body
    assert body["cost_details"]["tokens"] == body["cost"] and body["cost_details"]["per_image"] == 0.0
    assert (body["images"], body["compute_source"], body["compute_s"]) == (1, "none", 0.0)


def test_output_details_split_the_price_and_no_usage_is_billed_per_image(gw: GatewayProcess) -> None:
    """With output_tokens_details (1000 image, 56 text): 40 x 5e-6 + 1000 x 4e-5 + 56 x
    1e-5 = 0.04076, the details passed through; an answer without usage: per_image."""
    split = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "split: a harbour", "response": "json"})
    assert split.status_code == 200, split.text
    usage = split.json()["usage"]
    assert usage["output_tokens_details"] == {"image_tokens": 1000, "text_tokens": 56}
    assert usage["cost"] == pytest.approx(0.04076, abs=1e-9)
    assert split.headers["x-router-usage"].endswith('cost=0.040760, currency="USD"')
    bare = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "bare: a harbour", "response": "json"})
    usage = bare.json()["usage"]
    assert (usage["total_tokens"], usage["cost"], usage["cost_details"]) == (
        0,
        0.063,
        {"compute": 0.0, "per_image": 0.063, "cache_hits": 0.0},
    )


def _ledger_micros(gw: GatewayProcess) -> tuple[int, int]:
    rows = httpx.get(gw.url + "/admin/usage", headers=gw.admin).json()["rows"]
    return sum(r["cost_micros"] for r in rows), sum(r["images"] for r in rows)


def test_the_ledger_counts_what_the_token_priced_answers_said(gw: GatewayProcess) -> None:
    """Three answers' token-priced costs add to the ledger exactly, in micro-units."""
    time.sleep(0.5)  # earlier answers' ledger lines (written off the request path) land first
    before = _ledger_micros(gw)
    costs = []
    for i in range(3):
        r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"a gull {i}", "response": "json"})
        costs.append(r.json()["usage"]["cost"])
    assert costs == [pytest.approx(0.04244, abs=1e-9)] * 3
    deadline = time.monotonic() + 10
    while (after := _ledger_micros(gw)) != (before[0] + 3 * 42_440, before[1] + 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert after == (before[0] + 3 * 42_440, before[1] + 3), (before, after)
