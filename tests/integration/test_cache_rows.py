"""Two promises about a split route's arms, with real processes (Triton, the gateway,
the ``router`` CLI, the ``openai`` SDK):

- docs/cache.md "Pre-generation": prompts are queued "for every arm of the route they
  match, skipping what is stored" — both arms' images end up stored (a request on
  either side is a HIT that Triton never sees), and a second run makes nothing again
  (counted ``cached``);
- README "Tenants": "``sticky: field:tenant`` keeps a tenant on one side of a canary" —
  every request of one tenant lands on one arm, whoever its end users are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from image_router.triton import TritonServer
from tests.integration.routes_common import TIERS
from tests.procs import ADMIN_TOKEN, GatewayProcess

pytestmark = pytest.mark.integration

Start = Callable[..., GatewayProcess]


def split_routes(store: str) -> str:
    return (
        TIERS
        + f"""
cache: {{store: "{store}", ttl_s: 600}}
routes:
  - name: ab
    match: {{intent: ab}}
    split:
      - {{model: draft, weight: 50}}
      - {{model: noop, weight: 50, canary: true}}
    sticky: header:X-User-Id
    budget_ms: 8000
    cache: {{}}
default_route: {{name: default, model: draft, budget_ms: 8000}}
"""
    )


def _made(triton: TritonServer, model: str) -> int:
    """Requests Triton itself has run for ``model`` (its statistics extension)."""
    stats = httpx.get(f"{triton.http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def _pregen(gw: GatewayProcess, prompts: Path) -> str:
    """``router pregen FILE``, which follows the queue until it is drained."""
    env = {**os.environ, "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "pregen", str(prompts), "--url", gw.url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pregen_makes_every_arm_of_a_split_and_a_second_run_makes_nothing_again(
    start_gateway: Start, triton: TritonServer, tmp_path: Path
) -> None:
    gw = start_gateway(split_routes(f"disk://{tmp_path / 'cache'}"))
    prompts = tmp_path / "prompts.jsonl"
    items: list[dict[str, object]] = [
        {"prompt": "a lighthouse in fog", "intent": "ab", "seed": 11},
        {"prompt": "a red kite", "intent": "ab"},
    ]
    prompts.write_text("".join(json.dumps(item) + "\n" for item in items))
    before = {model: _made(triton, model) for model in ("draft", "noop")}

    assert "queued 4 jobs for 2 prompts" in _pregen(gw, prompts)  # two prompts, two arms each
    first = httpx.get(gw.url + "/admin/pregenerate", headers=gw.admin, timeout=10).json()["pregen"]
    assert (first["done"], first["cached"], first["failed"]) == (4, 0, 0), first
    made = {model: _made(triton, model) for model in ("draft", "noop")}
    assert made == {"draft": before["draft"] + 2, "noop": before["noop"] + 2}, (before, made)

    # either side of the canary, for either prompt, is served from the store
    for item in items:
        for side, model in (("never", "draft"), ("always", "noop")):
            r = httpx.post(gw.url + "/v1/images/generations", json=item, headers={"X-Canary": side}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.headers["x-router-model"].startswith(model) and r.headers["x-cache"] == "HIT", (item, r.headers)
    assert {model: _made(triton, model) for model in made} == made, "the hits were never generated"

    # the same list again: queued, and each job found its image stored when its turn came
    assert "queued 4 jobs for 2 prompts" in _pregen(gw, prompts)
    second = httpx.get(gw.url + "/admin/pregenerate", headers=gw.admin, timeout=10).json()["pregen"]
    assert (second["done"], second["cached"], second["failed"]) == (4, 4, 0), second
    assert {model: _made(triton, model) for model in made} == made, "nothing was made again"


ACME_KEY = "sk-acme-0123456789abcdef"
BETA_KEY = "sk-beta-0123456789abcdef"
# The cohort hash is SHA-256 (image_router/policy/split.py), the same in every process; these
# two names fall on different sides of this route (`acme` the canary's, `beta` the
# baseline's), so a cohort key that ignored the tenant would show.
TENANT_ROUTES = (
    TIERS
    + """
tenants:
  mode: keys
  tenants:
    acme: {keys: ["${ACME_KEY}"]}
    beta: {keys: ["${BETA_KEY}"]}
routes:
  - name: ab
    match: {intent: ab}
    split:
      - {model: noop, weight: 50}
      - {model: noop-canary, weight: 50, canary: true}
    sticky: field:tenant
default_route: {name: main, model: noop, budget_ms: 5000}
env: [ACME_KEY, BETA_KEY]
"""
)


def test_sticky_field_tenant_keeps_each_tenant_on_one_side_of_the_canary(start_gateway: Start) -> None:
    gw = start_gateway(TENANT_ROUTES, env={"ACME_KEY": ACME_KEY, "BETA_KEY": BETA_KEY})
    sides: dict[str, set[tuple[str, str]]] = {}
    for tenant, key in (("acme", ACME_KEY), ("beta", BETA_KEY)):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
        sides[tenant] = set()
        for i in range(12):  # a different end user each time: the cohort is the tenant's
            raw = client.images.with_raw_response.generate(
                prompt=f"a kite {i}", user=f"user-{i}", extra_body={"intent": "ab"}
            )
            assert raw.headers["x-router-tenant"] == tenant and raw.headers["x-router-route"] == "ab"
            sides[tenant].add((raw.headers["x-router-model"].split("@")[0], raw.headers["x-router-canary"]))
    assert all(len(side) == 1 for side in sides.values()), sides
    assert sides["acme"] != sides["beta"], sides
    assert sides["acme"] | sides["beta"] == {("noop", "false"), ("noop-canary", "true")}, sides
