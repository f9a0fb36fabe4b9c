"""routes.yaml cannot read the gateway's secrets (issue 30, item 9), against a real
gateway: a hot reload that puts ``${ROUTER_ADMIN_TOKEN}`` into ``public_url`` — which once
published the admin token in every image URL — is refused at its line, the running table
keeps serving, and no answer ever carries the token; a tenants file outside the declared
secret directories is refused the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.routes_common import TIERS
from tests.procs import ADMIN_TOKEN, GatewayProcess

CACHED = (
    TIERS
    + """
cache: {store: "disk://STORE", public_url: "PUBLIC_URL"}
default_route: {name: main, model: noop, budget_ms: 5000, cache: {}}
"""
)


def cached(store: Path, public_url: str) -> str:
    return CACHED.replace("STORE", str(store)).replace("PUBLIC_URL", public_url)


def _digest(gw: GatewayProcess) -> str:
    digest: str = httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10).json()["active"]["digest"]
    return digest


def test_a_reload_cannot_put_the_admin_token_into_image_urls(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = start_gateway(cached(tmp_path / "cache", "https://images.example.com"))
    before = _digest(gw)
    gw.routes.write_text(cached(tmp_path / "cache", "https://x.example/${ROUTER_ADMIN_TOKEN}"))
    r = httpx.post(gw.url + "/admin/reload", headers=gw.admin, timeout=30)
    assert r.status_code == 422 and r.json()["ok"] is False
    assert any("ROUTER_ADMIN_TOKEN" in e and "routes.yaml:" in e for e in r.json()["errors"]), r.json()
    assert _digest(gw) == before, "the running table keeps serving"
    answer = httpx.post(gw.url + "/v1/images/generations", json={"prompt": "x", "response_format": "url"}, timeout=30)
    assert answer.status_code == 200 and ADMIN_TOKEN not in answer.text
    assert answer.json()["data"][0]["url"].startswith("https://images.example.com/")


def test_a_tenants_file_outside_the_secret_directories_is_refused(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = start_gateway(TIERS + "default_route: {name: main, model: noop, budget_ms: 5000}\n")
    outside = tmp_path.parent / "elsewhere-tenants.yaml"
    outside.write_text("mode: keys\ntenants:\n  a: {keys: [sk-outside-0123456789abcdef]}\n")
    gw.routes.write_text(
        TIERS + f"tenants: {{file: {outside}}}\ndefault_route: {{name: main, model: noop, budget_ms: 5000}}\n"
    )
    r = httpx.post(gw.url + "/admin/reload", headers=gw.admin, timeout=30)
    assert r.status_code == 422 and any("routes.yaml:" in e for e in r.json()["errors"]), r.json()
    open_answer = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x"}, timeout=30)
    assert open_answer.status_code == 200, "still the running table: open mode, no key needed"
