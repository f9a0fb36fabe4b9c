"""The status page in a real headless browser (Debian's chromium, driven by Playwright):
it asks for the token, renders, and its numbers move after traffic."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.integration.routes_common import ROUTING, TIERS
from tests.procs import ADMIN_TOKEN, ROOT, GatewayProcess

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without these, Chromium keeps trying to reach Google's services on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def traffic(gw: GatewayProcess, n: int) -> None:
    for i in range(n):
        httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"p{i}", "intent": "canary"}, timeout=30)
    httpx.post(gw.url + "/api/v1/generate", json={"prompt": "a castle", "intent": "tight"}, timeout=30)


def signed_in(browser: Browser, gw: GatewayProcess, **page_options: Any) -> Page:
    """A page signed in to ``gw``'s status page with the admin token."""
    page = browser.new_page(**page_options)
    page.goto(gw.url + "/admin/login")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("input[type=submit]")
    return page


def rollout_routes(tmp_path: Path, route: str, rollout: str) -> str:
    """One split of noop and a canary noop-canary carrying ``rollout``, its state in a
    SQLite state store (one machine, no Redis)."""
    return (
        TIERS
        + f"""
state: {{store: "sqlite://{tmp_path / "state" / "state.db"}"}}
routes:
  - name: {route}
    split:
      - {{model: noop, weight: 100}}
      - {{model: noop-canary, canary: true, rollout: {rollout}}}
default_route: draft
"""
    )


def test_status_page_renders_and_moves(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, browser: Browser
) -> None:
    gw = start_gateway(ROUTING)
    redirect = httpx.get(gw.url + "/admin/", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/admin/login"
    assert httpx.get(gw.url + "/admin/status.json").status_code == 401
    traffic(gw, 30)
    shot = tmp_path / "status-page.png"
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(gw.url + "/admin/")
    assert page.url.endswith("/admin/login")
    page.fill("input[name=token]", "wrong")
    page.click("input[type=submit]")
    assert "Wrong token" in page.content()
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("input[type=submit]")
    page.wait_for_selector("#models tr[data-model='noop'] .attempts")
    cell = "#models tr[data-model='noop'] .attempts"
    before = int(page.text_content(cell) or "0")
    assert before > 0
    verdict = page.text_content("#canaries tbody tr:nth-child(2) td:last-child") or ""
    status = httpx.get(gw.url + "/admin/status.json", headers=gw.admin).json()
    canary = next(c for c in status["canaries"] if c["route"] == "canary")
    assert verdict == canary["verdict"], "the page shows the verdict the gateway computed"
    attempts = int(status["models"]["noop"]["attempts"])
    assert attempts == before, "the page's counts are the gateway's (no traffic since the page read them)"
    assert "quality" in (page.text_content("#downgrades") or ""), "the tight route's downgrade is listed"
    assert page.text_content("#digest") == httpx.get(gw.url + "/readyz").json()["config_digest"]
    traffic(gw, 15)
    page.wait_for_function(
        "([sel, b]) => Number(document.querySelector(sel).textContent) > b", arg=[cell, before], timeout=15000
    )
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "status-page.png")


def test_status_page_shows_the_cache(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, browser: Browser
) -> None:
    from tests.integration.test_cache import cached_routes, openai

    gw = start_gateway(cached_routes(f"disk://{tmp_path / 'cache'}"))
    assert openai(gw, "thumb of a page", seed=1).headers["x-cache"] == "MISS"
    for _ in range(3):
        assert openai(gw, "thumb of a page", seed=1).headers["x-cache"] == "HIT"
    page = signed_in(browser, gw)
    page.wait_for_selector("#cache tbody tr td:has-text('thumbs')")
    row = page.locator("#cache tbody tr", has_text="thumbs")
    cells = [c.strip() for c in row.locator("td").all_text_contents()]
    assert cells == ["thumbs", "draft@1", "3", "1", "0", "0", "75.0%"]
    assert "disk store" in (page.text_content("#cache-store") or "")


def test_status_page_shows_a_rollout(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, browser: Browser
) -> None:
    """A rollout on one machine (the SQLite state store, no Redis): the page charts its
    weight, lists its decisions with their numbers, and shows both arms' images."""
    routes = rollout_routes(tmp_path, "rollout", "{steps: [50, 100], interval_s: 1.5, analysis: {min_samples: 10}}")
    gw = start_gateway(routes)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i in range(10):
            httpx.post(gw.url + "/api/v1/generate", json={"prompt": f"p{i}"}, timeout=30)
        if httpx.get(gw.url + "/admin/canary/rollout", headers=gw.admin).json()["status"] == "promoted":
            break
    state = httpx.get(gw.url + "/admin/canary/rollout", headers=gw.admin).json()
    assert state["status"] == "promoted"
    assert [d["action"] for d in state["decisions"]] == ["start", "advance", "promote"]
    shot = tmp_path / "rollout.png"
    page = signed_in(browser, gw, viewport={"width": 1280, "height": 900})
    page.wait_for_selector(".rollout[data-route='rollout'] svg path")
    card = page.locator(".rollout[data-route='rollout']")
    assert card.locator(".weight").text_content() == "100.0%"
    assert card.locator(".status").text_content() == "promoted"
    assert card.locator(".decisions tbody tr").count() == 3
    assert "p95_ratio" in (card.locator(".decisions").text_content() or "")
    assert card.locator(".gallery img").count() >= 2
    path = card.locator("svg path").get_attribute("d") or ""
    assert path.count("L") >= 6, "the chart steps up at each decision"
    page.screenshot(path=str(shot), full_page=True)
    assert card.locator("button[data-action]").count() == 0, "a promoted rollout offers no action"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "rollout-page.png")


def test_an_operator_aborts_a_rollout_from_the_status_page(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path, browser: Browser
) -> None:
    """The page's buttons act on the rollout (with a confirmation); a cookie alone,
    without the page's header, cannot."""
    routes = rollout_routes(tmp_path, "slowly", "{steps: [10, 50], interval_s: 3600}")
    gw = start_gateway(routes)
    page = signed_in(browser, gw)
    card = page.locator(".rollout[data-route='slowly']")
    card.locator("button[data-action='abort']").wait_for()
    assert sorted(card.locator("button[data-action]").all_text_contents()) == ["abort", "pause", "promote"]
    forged = page.evaluate("async () => (await fetch('/admin/canary/slowly/promote', {method: 'POST'})).status")
    assert forged == 403, "the session cookie alone does not act"
    page.on("dialog", lambda dialog: dialog.accept())
    card.locator("button[data-action='abort']").click()
    page.wait_for_function(
        "() => document.querySelector(\".rollout[data-route='slowly'] .status\").textContent === 'rolled_back'"
    )
    state = httpx.get(gw.url + "/admin/canary/slowly", headers=gw.admin).json()
    assert state["weight"] == 0 and state["decisions"][-1]["action"] == "abort"
    assert state["decisions"][-1]["by"] == "operator"
