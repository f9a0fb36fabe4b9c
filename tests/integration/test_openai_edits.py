"""docs/openai.md "Edits and variations", what no other test reads: ``input_fidelity``
``high``/``low`` are strength 0.5/0.8, ``strength`` is in (0, 1], JPEG and WebP
uploads are taken, a side under 8 px is refused by name, and an edit is never stored in
the result cache (its key holds no picture) even on a cached route."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from image_router.triton import TritonServer
from tests.integration.test_cache import inferences
from tests.procs import ROOT, GatewayProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The shipped routes.yaml (its sketch route is cached), the cache in a directory of its own."""
    directory = tmp_path_factory.mktemp("edits")
    routes = directory / "routes.yaml"
    routes.write_text((ROOT / "routes.yaml").read_text().replace("disk://.router-cache", f"disk://{directory}/cache"))
    grpc = f"127.0.0.1:{triton.config.grpc_port}"  # the shipped file's backend speaks gRPC
    gateway = GatewayProcess(routes, triton.http_url, directory / "gateway.log", triton_grpc=grpc)
    yield gateway
    gateway.stop()


def picture(size: tuple[int, int] = (64, 64), fmt: str = "PNG") -> bytes:
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, format=fmt)
    return out.getvalue()


def edit(
    gw: GatewayProcess, data: dict[str, str], image: bytes | None = None, mime: str = "image/png"
) -> httpx.Response:
    files = {"image": ("in", image if image is not None else picture(), mime)}
    body = {"prompt": "a sketch in blue", "seed": "4", **data}
    return httpx.post(gw.url + "/v1/images/edits", data=body, files=files, timeout=60)


def pixels(r: httpx.Response) -> bytes:
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()["data"][0]["b64_json"])


def test_input_fidelity_is_a_strength(gw: GatewayProcess) -> None:
    high, low = pixels(edit(gw, {"input_fidelity": "high"})), pixels(edit(gw, {"input_fidelity": "low"}))
    assert high == pixels(edit(gw, {"strength": "0.5"}))
    assert low == pixels(edit(gw, {"strength": "0.8"}))
    assert high != low


@pytest.mark.parametrize("strength", ["0", "-0.1", "1.01"])
def test_a_strength_outside_0_to_1_is_refused_by_name(gw: GatewayProcess, strength: str) -> None:
    r = edit(gw, {"strength": strength})
    assert r.status_code == 400 and r.json()["error"]["param"] == "strength", r.text


def test_jpeg_and_webp_uploads_and_the_smallest_side(gw: GatewayProcess) -> None:
    for fmt, mime in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        assert edit(gw, {}, picture(fmt=fmt), mime).status_code == 200, fmt
    assert edit(gw, {}, picture((8, 8))).status_code == 200
    small = edit(gw, {}, picture((7, 64)))
    assert small.status_code == 400 and small.json()["error"]["param"] == "image", small.text


def test_an_edit_is_not_stored_in_the_result_cache(gw: GatewayProcess, triton: TritonServer) -> None:
    before = inferences(triton, "draft")
    first, second = edit(gw, {}), edit(gw, {})  # the sketch route: cached, same prompt and seed
    assert pixels(first) == pixels(second)  # the same edit
    assert first.headers["x-router-route"] == "sketch" and "x-cache" not in second.headers
    assert inferences(triton, "draft") == before + 2  # made twice: never answered from the store
