"""Tenants do not share cached images unless a route says so (real Triton, a real
gateway in keys mode): a second tenant asking the same prompt as the first is served a
fresh generation, never the first one's stored answer — a ``HIT`` with its ``Age`` once
told it what another tenant asked, and when. A route with ``cache: {scope: shared}``
(public assets) is one space for everyone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

A_KEY, B_KEY = "sk-tenant-a-0123456789abcdef", "sk-tenant-b-0123456789abcdef"
ROUTES = (
    TIERS
    + f"""
cache: {{store: "disk://CACHE_DIR"}}
tenants:
  mode: keys
  tenants:
    a: {{keys: ["{A_KEY}"]}}
    b: {{keys: ["{B_KEY}"]}}
routes:
  - name: public
    match: {{intent: public}}
    model: draft
    budget_ms: 30000
    cache: {{scope: shared}}
default_route: {{name: private, model: draft, budget_ms: 30000, cache: {{}}}}
"""
)


def _ask(gw: GatewayProcess, key: str, intent: str | None = None) -> httpx.Response:
    body = {"prompt": "a lighthouse at dusk", "seed": 3, **({"intent": intent} if intent else {})}
    r = httpx.post(gw.url + "/api/v1/generate", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def test_a_tenants_cached_images_are_its_own_unless_the_route_shares_them(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = start_gateway(ROUTES.replace("CACHE_DIR", str(tmp_path / "cache")))
    first = _ask(gw, A_KEY)
    assert first.headers["x-cache"] == "MISS"
    assert _ask(gw, A_KEY).headers["x-cache"] == "HIT", "a tenant's own entries are found"
    other = _ask(gw, B_KEY)
    assert other.headers["x-cache"] == "MISS", "another tenant never sees the first one's entry"
    assert other.content == first.content, "the same seed makes the same image all the same"
    assert _ask(gw, A_KEY, "public").headers["x-cache"] == "MISS"
    shared = _ask(gw, B_KEY, "public")
    assert shared.headers["x-cache"] == "HIT" and shared.headers["x-router-route"] == "public"
