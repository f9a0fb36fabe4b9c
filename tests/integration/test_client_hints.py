"""Adaptive quality by network, as a real Chromium meets it (docs/client-hints.md).

A headless Chromium (Debian's, driven by Playwright) first navigates to an image URL of
the gateway: that answer's ``Accept-CH`` opts the origin in, and from then on Chromium
sends ``ECT`` and ``Downlink`` to it (not on that first navigation: the request log
checks). With nothing emulated it says ``ECT: 4g`` and a ``Downlink`` of about 1.5 on
loopback, which changes nothing; with ``Network.emulateNetworkConditions`` (CDP) at
50 kbps the same page's requests say ``ECT: 2g`` / ``Downlink: 0.05`` and the answers
are adapted: ``/api/v1/generate`` by format, quality, and on the route that opts in a
smaller size and the fallback tier; an image URL by quality. ``Save-Data: on`` (sent by
the context's headers: desktop Chromium has no data saver of its own) does the same.
Every answer names what it varies on and asks for the hints."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.integration

ROUTES = (
    TIERS.replace("latency_hint_ms: 150}", "latency_hint_ms: 150, native_side: 64}").replace(
        "latency_hint_ms: 700}", "latency_hint_ms: 700, native_side: 128}"
    )
    + """
cache: {store: "disk://CACHE", max_bytes: 50000000, ttl_s: 600}
routes:
  - name: adaptive
    match: "prompt:(?i)\\\\bcat\\\\b"
    model: preview
    fallback: [draft]
    budget_ms: 20000
    client_hints: {max_side: 48, downgrade: true}
    cache: {seedless: share}
default_route: {name: default, model: draft, budget_ms: 20000}
"""
)
SLOW_2G = {"offline": False, "latency": 2000, "downloadThroughput": 50 * 1024 / 8, "uploadThroughput": 20 * 1024 / 8}
HINTS = ("save-data", "ect", "downlink")

# fetch() from the page: the answer's headers, its type and the decoded image's size
GENERATE = """async (body) => {
  const r = await fetch("/api/v1/generate", {method: "POST", body: JSON.stringify(body),
                                             headers: {"Content-Type": "application/json"}});
  const bitmap = await createImageBitmap(await r.blob());
  return {status: r.status, headers: Object.fromEntries(r.headers), size: [bitmap.width, bitmap.height]};
}"""
IMG = """(src) => new Promise((done) => {
  const img = new Image();
  img.onload = () => done([img.naturalWidth, img.naturalHeight]);
  img.onerror = () => done(null);
  img.src = src;
  document.body.appendChild(img);
})"""


@pytest.fixture()
def gw(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> GatewayProcess:
    return start_gateway(ROUTES.replace("CACHE", str(tmp_path / "cache")))


@pytest.fixture()
def image_url(gw: GatewayProcess) -> str:
    """An image URL without ``?q=`` (OpenAI ``response_format: url``, WebP): its quality is open."""
    answer = httpx.post(
        gw.url + "/v1/images/generations",
        json={"prompt": "a dog on a hill", "response_format": "url", "output_format": "webp"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    url: str = answer.json()["data"][0]["url"]
    assert "?" not in url
    return url


class Sent:
    """What Chromium sent (Playwright's ``request.all_headers()``: the headers on the wire)."""

    def __init__(self, context: BrowserContext) -> None:
        self.log: list[tuple[str, dict[str, str]]] = []
        context.on("request", lambda r: self.log.append((r.url, r.all_headers())))

    def hints(self, path: str) -> list[dict[str, str]]:
        return [{k: v for k, v in h.items() if k in HINTS} for url, h in self.log if path in url]


def _open(browser: Browser, image_url: str, **options: Any) -> tuple[BrowserContext, Page, Sent]:
    context = browser.new_context(**options)
    sent = Sent(context)
    page = context.new_page()
    first = page.goto(image_url)
    assert first is not None and first.status == 200
    assert first.headers["accept-ch"] == "Save-Data, ECT, Downlink"  # the origin opts in here
    return context, page, sent


def test_chromium_on_a_fast_link_gets_what_it_would_have_got(browser: Browser, image_url: str) -> None:
    """No emulation: Chromium sends ECT 4g and its loopback Downlink estimate; nothing is
    adapted, and every answer still names the hints it varies on."""
    context, page, sent = _open(browser, image_url)
    assert not {"ect", "downlink"} & set(sent.hints(image_url)[0])  # before Accept-CH: not sent
    answer = page.evaluate(GENERATE, {"prompt": "a cat"})
    assert answer["status"] == 200
    headers = answer["headers"]
    assert "x-router-adapted" not in headers, headers
    assert headers["content-type"] == "image/png"  # fetch() sends Accept: */*
    assert answer["size"] == [128, 128]
    assert headers["x-router-model"].startswith("preview")
    assert headers["vary"] == "Accept, Save-Data, ECT, Downlink"
    assert headers["accept-ch"] == "Save-Data, ECT, Downlink"
    (said,) = sent.hints("/api/v1/generate")
    assert said["ect"] == "4g" and float(said["downlink"]) >= 1.0, said
    with page.expect_response(lambda r: r.url.startswith(image_url) and r.request.resource_type == "image") as info:
        assert page.evaluate(IMG, image_url + "?again") is not None
    image = info.value
    assert "x-router-adapted" not in image.headers
    assert image.headers["etag"].endswith('-webp-90"')
    assert image.headers["vary"] == "Save-Data, ECT, Downlink"
    context.close()


def test_chromium_on_an_emulated_2g_link_gets_a_smaller_image(browser: Browser, image_url: str) -> None:
    """CDP network emulation: the page's requests say ECT 2g / Downlink 0.05, and
    ``/api/v1/generate`` answers JPEG at quality 50, from the fallback tier, at the
    route's max_side; the image URL at quality 50, under its own ETag."""
    context, page, sent = _open(browser, image_url)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", SLOW_2G)
    answer = page.evaluate(GENERATE, {"prompt": "a cat"})
    assert answer["status"] == 200
    headers = answer["headers"]
    (said,) = sent.hints("/api/v1/generate")
    assert said == {"ect": "2g", "downlink": "0.05"}, said
    assert headers["x-router-adapted"] == "format=jpeg, quality=50, size=48x48, tier=draft"
    assert headers["content-type"] == "image/jpeg"
    assert answer["size"] == [48, 48]
    assert headers["x-router-model"].startswith("draft")
    assert headers["vary"] == "Accept, Save-Data, ECT, Downlink"
    explicit = page.evaluate(GENERATE, {"prompt": "a cat", "format": "png"})  # the client's own choice wins
    assert explicit["headers"]["content-type"] == "image/png"
    assert "format" not in explicit["headers"]["x-router-adapted"]
    with page.expect_response(lambda r: r.url.startswith(image_url) and r.request.resource_type == "image") as info:
        assert page.evaluate(IMG, image_url + "?slow") is not None
    image = info.value
    assert image.headers["x-router-adapted"] == "quality=50"
    assert image.headers["etag"].endswith('-webp-50"')  # a variant of its own, never the default one
    assert image.headers["vary"] == "Save-Data, ECT, Downlink"
    asked = httpx.get(image_url + "?q=80", headers={"ECT": "2g"}, timeout=30)  # ?q= wins
    assert "x-router-adapted" not in asked.headers and "vary" not in asked.headers
    context.close()


def test_save_data_adapts_and_its_answer_is_not_served_to_others(browser: Browser, image_url: str) -> None:
    """``Save-Data: on`` alone is a constrained link; the same request without it is not
    adapted — the gateway's own result cache keys the smaller size apart."""
    context, page, sent = _open(browser, image_url, extra_http_headers={"Save-Data": "on"})
    answer = page.evaluate(GENERATE, {"prompt": "a cat"})
    assert sent.hints("/api/v1/generate")[0]["save-data"] == "on"
    assert answer["headers"]["x-router-adapted"] == "format=jpeg, quality=50, size=48x48, tier=draft"
    context.close()
    plain = httpx.post(image_url.split("/v1/")[0] + "/api/v1/generate", json={"prompt": "a cat"}, timeout=60)
    assert "x-router-adapted" not in plain.headers
    assert Image.open(io.BytesIO(plain.content)).size == (128, 128)
