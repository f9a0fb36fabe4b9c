"""Image delivery promises of docs/cache.md that no other test reads: a purged image's
URL (and its encoded variants) is a 404, ``Cache-Tag`` carries what ``Surrogate-Key``
does, a negotiated answer says ``Vary: Accept``, and an image URL's ``?q=`` is the
quality it is encoded at."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.test_cache import cached_routes, openai
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration


@pytest.fixture()
def gateway(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> GatewayProcess:
    return start_gateway(cached_routes(f"disk://{tmp_path / 'cache'}"))


def test_a_purged_images_url_and_its_variants_are_404(gateway: GatewayProcess) -> None:
    r = openai(gateway, "thumb of a moth", seed=2, response_format="url")
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    webp = url.rsplit(".", 1)[0] + ".webp?q=60"
    assert httpx.get(url, timeout=30).status_code == 200
    assert httpx.get(webp, timeout=30).status_code == 200  # an encoded variant, now stored too
    purge = httpx.post(gateway.url + "/admin/cache/purge", json={"model": "draft"}, headers=gateway.admin, timeout=30)
    assert purge.status_code == 200 and purge.json()["removed"] >= 2, purge.text
    for gone in (url, webp):
        answer = httpx.get(gone, timeout=30)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "image_not_found", (gone, answer.text)


def test_cdn_tags_vary_and_the_quality_of_an_image_url(gateway: GatewayProcess) -> None:
    r = openai(gateway, "thumb of a wren", seed=3, response_format="url")
    url = r.json()["data"][0]["url"]
    image = httpx.get(url, timeout=30)
    surrogate = image.headers["surrogate-key"].split(" ")
    assert image.headers["cache-tag"].split(",") == surrogate
    assert surrogate == ["model:draft@1", "model:draft", "route:thumbs"]
    # ?q= is the quality: the same picture at 10 is smaller and further from the original
    base = url.rsplit(".", 1)[0]
    png = Image.open(io.BytesIO(image.content)).convert("RGB")
    sizes, errors = {}, {}
    for q in (10, 95):
        jpeg = httpx.get(f"{base}.jpeg?q={q}", timeout=30)
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        decoded = Image.open(io.BytesIO(jpeg.content)).convert("RGB")
        sizes[q] = len(jpeg.content)
        errors[q] = float(np.abs(np.asarray(decoded, int) - np.asarray(png, int)).mean())
    assert sizes[10] < sizes[95] and errors[10] > errors[95], (sizes, errors)
    # a negotiated answer says what it was negotiated on
    negotiated = httpx.post(
        gateway.url + "/api/v1/generate", json={"prompt": "thumb of a wren", "seed": 3},
        headers={"Accept": "image/webp;q=0.9, image/png;q=0.5"}, timeout=30,
    )  # fmt: skip
    assert negotiated.headers["content-type"] == "image/webp"
    assert negotiated.headers["vary"] == "Accept, Save-Data, ECT, Downlink"  # and the hints (docs/client-hints.md)
