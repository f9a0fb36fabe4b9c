"""``/openapi.json`` and ``/docs`` from a running gateway: the document it serves is
the one its routes make, and the page renders every operation in a real browser with
nothing fetched from elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from openapi_spec_validator import validate
from playwright.sync_api import Browser

from image_router.app import _routes
from image_router.http.openapi import document
from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration


def test_the_gateway_serves_its_document_and_a_page_that_renders_it_offline(
    start_gateway: Callable[..., GatewayProcess], browser: Browser
) -> None:
    gw = start_gateway(TIERS + "default_route: {model: draft}\n")
    doc = httpx.get(f"{gw.url}/openapi.json", timeout=10).json()
    validate(doc)
    assert doc == document(_routes()), "what it serves is what its routes make"
    operations = sum(len(methods) for methods in doc["paths"].values())

    page = browser.new_page()
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(gw.url) else elsewhere.append(r.url))
    page.goto(f"{gw.url}/docs")
    page.wait_for_selector("details.op")
    assert page.locator("details.op").count() == operations
    page.fill("#filter", "jobs/{job_id}/cancel")
    page.wait_for_function("document.querySelectorAll('details.op').length === 2")
    page.locator("details.op summary").first.click()
    assert "request body" not in page.locator("details.op").first.inner_text()
    page.fill("#filter", "/v1/images/generations")
    page.locator("details.op summary").first.click()
    assert '"prompt"' in page.locator("details.op").first.inner_text(), "the body's schema, resolved"
    assert elsewhere == [], elsewhere
    page.close()
