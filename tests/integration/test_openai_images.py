"""The OpenAI Images API as the official SDK uses it, against the shipped routes.yaml and
the real Triton: every request field changes what is served or is refused by name
(``BadRequestError.param``), the model names clients already send work, and
``stream=True`` sends the draft tier's image as a partial image before the routed one."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from image_router.triton import TritonServer
from tests.procs import ROOT, GatewayProcess

Start = Callable[..., GatewayProcess]


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The shipped routes.yaml, its cache in a directory of its own."""
    directory = tmp_path_factory.mktemp("openai")
    routes = directory / "routes.yaml"
    routes.write_text((ROOT / "routes.yaml").read_text().replace("disk://.router-cache", f"disk://{directory}/cache"))
    gateway = GatewayProcess(
        routes, triton.http_url, directory / "gateway.log", triton_grpc=f"127.0.0.1:{triton.config.grpc_port}"
    )
    yield gateway
    gateway.stop()


def _client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def _image(b64: str | None) -> Image.Image:
    assert b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": "transparent"}, "background"),
        ({"style": "vivid"}, "style"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "svg"}, "output_format"),
        ({"frame_count": 4}, "frame_count"),
        ({"frame_duration_ms": 100}, "frame_duration_ms"),
        ({"complexity": "high"}, "complexity"),
        ({"svg": {"model": "x"}}, "svg"),
        ({"quality": "ultra"}, "quality"),
        ({"n": 11}, "n"),
        ({"size": "huge"}, "size"),
        ({"output_compression": 50}, "output_compression"),  # PNG has no compression level
        ({"partial_images": 2}, "partial_images"),  # without stream
        ({"moderation": "none"}, "moderation"),
        ({"response_format": "jpeg"}, "response_format"),
        ({"bogus_field": 1}, "bogus_field"),
        ({"model": "gpt-image-9000"}, "model"),
        ({"size": "4096x4096"}, "size"),  # beyond every tier, on a route that does not upscale
    ],
)
def test_every_refused_field_is_named_in_param(gw: GatewayProcess, fields: dict[str, Any], param: str) -> None:
    client = _client(gw)
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as info:
        client.images.generate(prompt="a sketch of a boat", extra_body=fields)
    assert info.value.param == param, info.value.body


def test_quality_selects_a_tier_through_the_routes_and_the_answer_says_what_it_was(gw: GatewayProcess) -> None:
    client = _client(gw)
    served, routes = {}, {}
    for quality in ("low", "medium", "high", "standard", "hd", "xhigh", "max"):
        raw = client.images.with_raw_response.generate(
            prompt="a lighthouse", extra_body={"seed": 3, "quality": quality}
        )
        answer = raw.parse()
        routes[quality] = raw.headers["x-router-route"]
        # the tier that made it, or the one it was meant for when it was downgraded in time
        fallback = raw.headers.get("x-router-fallback")
        served[quality] = fallback.split(":")[0] if fallback else raw.headers["x-router-model"].split("@")[0]
        assert answer.quality == quality and answer.output_format == "png" and answer.background == "opaque"
        width, height = _image(answer.data[0].b64_json).size  # type: ignore[index]
        assert answer.size == f"{width}x{height}"
        assert answer.usage is None  # no tokens here: not made up (docs/openai.md)
    assert routes == {
        "low": "quality-low",
        "medium": "quality-medium",
        "standard": "quality-medium",
        "high": "quality-high",
        "hd": "quality-high",
        "xhigh": "quality-high",
        "max": "quality-high",
    }
    intended = {"low": "draft", "medium": "preview", "standard": "preview"}
    assert served == {**dict.fromkeys(routes, "quality"), **intended}, served
    # `auto` names no tier: the prompt's routes decide
    for prompt, route in (("a photo of a lighthouse", "photo"), ("a sketch of a lighthouse", "sketch")):
        raw = client.images.with_raw_response.generate(prompt=prompt, quality="auto")
        assert raw.headers["x-router-route"] == route, prompt


def test_formats_users_and_model_names_clients_already_send(gw: GatewayProcess) -> None:
    client = _client(gw)
    webp = client.images.generate(prompt="a sketch of a kite", output_format="webp", output_compression=80)
    assert webp.output_format == "webp" and _image(webp.data[0].b64_json).format == "WEBP"  # type: ignore[index]
    jpeg = client.images.generate(prompt="a sketch of a kite", output_format="jpeg")
    assert _image(jpeg.data[0].b64_json).format == "JPEG"  # type: ignore[index]
    # output_compression is the lossy formats' quality: the same picture (seed) at 10 is
    # smaller and further from the lossless pixels than at 95
    plain = client.images.generate(prompt="a sketch of a kite", extra_body={"seed": 8})
    png = np.asarray(_image(plain.data[0].b64_json).convert("RGB"))  # type: ignore[index]
    lossy = {}
    for level in (10, 95):
        answer = client.images.generate(prompt="a sketch of a kite", output_format="webp", output_compression=level,
                                        extra_body={"seed": 8})  # fmt: skip
        blob = answer.data[0].b64_json  # type: ignore[index]
        assert blob
        pixels = np.asarray(_image(blob).convert("RGB")).astype(int)
        lossy[level] = (len(base64.b64decode(blob)), float(np.abs(pixels - png.astype(int)).mean()))
    assert lossy[10][0] < lossy[95][0] and lossy[10][1] > lossy[95][1], lossy
    # the model names clients already send are aliases of `auto`: the routes decide by the
    # prompt (a sketch goes to the sketch route, anything else to the default), no fixed tier
    for name in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-2", "dall-e-3", "dall-e-2", "chatgpt-image-latest"):
        raw = client.images.with_raw_response.generate(model=name, prompt="a sketch of a fox")
        assert raw.http_response.status_code == 200 and raw.headers["x-router-route"] == "sketch", name
        raw = client.images.with_raw_response.generate(model=name, prompt="a fox")
        assert raw.headers["x-router-route"] == "default", name
    answer = client.images.generate(prompt="a sketch of a fox", safety_identifier="user-hash-42")
    assert answer.safety_identifier == "user-hash-42"
    legacy = client.images.generate(prompt="a sketch of a fox", user="legacy-user")
    assert legacy.safety_identifier == "legacy-user"


def test_a_1024_request_on_an_upscaling_route_is_made_at_the_tiers_largest_and_upscaled(gw: GatewayProcess) -> None:
    client = _client(gw)
    raw = client.images.with_raw_response.generate(prompt="a lighthouse at night", size="1024x1024", quality="medium")
    answer = raw.parse()
    image = _image(answer.data[0].b64_json)  # type: ignore[index]
    assert image.size == (1024, 1024) and answer.size == "1024x1024"
    assert raw.headers["x-router-upscaled"] in ("128x128->1024x1024", "64x64->1024x1024"), raw.headers
    wide = client.images.with_raw_response.generate(prompt="a lighthouse at night", size="1536x1024", quality="low")
    assert _image(wide.parse().data[0].b64_json).size == (1536, 1024)  # type: ignore[index]
    assert wide.headers["x-router-upscaled"] == "64x40->1536x1024"
    with pytest.raises(openai.BadRequestError) as info:  # past what an upscaling route makes
        client.images.generate(prompt="a lighthouse at night", size="4096x4096", quality="low")
    assert info.value.param == "size"


def test_a_stream_sends_the_draft_as_a_partial_image_then_the_routed_image(gw: GatewayProcess) -> None:
    client = _client(gw)
    t0 = time.monotonic()
    events = []
    for event in client.images.generate(
        prompt="a photo of a harbour", stream=True, partial_images=1, extra_body={"seed": 11}
    ):
        events.append((time.monotonic() - t0, event))
    kinds = [e.type for _, e in events]
    assert kinds == ["image_generation.partial_image", "image_generation.completed"], kinds
    first_s, partial = events[0]
    _, completed = events[1]
    assert partial.partial_image_index == 0 and first_s < 2.0, first_s  # the draft tier, well inside its p95
    small, final = _image(partial.b64_json), _image(completed.b64_json)
    assert small.size[0] < final.size[0], (small.size, final.size)
    assert completed.output_format == "png"
    extra = completed.model_extra
    # the routed tier, or — on a host too busy for quality to fit the 4 s budget beside the
    # preview — a downgrade that says so (the full suite saw preview once): never silently
    assert extra["router_model"].startswith("quality") or (
        extra["router_downgraded"] is True and str(extra["router_fallback"]).startswith("quality:")
    ), extra


def test_a_stream_whose_routed_tier_misses_its_budget_completes_with_the_partial_image(
    start_gateway: Start, tmp_path: Path
) -> None:
    routes = (ROOT / "routes.yaml").read_text().replace("disk://.router-cache", f"disk://{tmp_path}/cache")
    photo = "budget_ms: 4000\n    fallback: [preview, draft]"
    routes = routes.replace(photo, "budget_ms: 400\n    fallback: [draft]", 1)
    gw = start_gateway(routes, name="tight.yaml")
    client = _client(gw)
    events = list(client.images.generate(prompt="a photo of a cliff", stream=True, partial_images=1))
    # quality cannot make 400 ms: the routed answer is the draft tier's, tagged downgraded. The
    # draft preview is the same generation (same tier, seed and cache key: made once), so it
    # is not sent twice when it is ready no sooner than the answer.
    kinds = [e.type for e in events]
    assert kinds in (["image_generation.completed"], ["image_generation.partial_image", "image_generation.completed"])
    completed = events[-1]
    assert completed.model_extra and completed.model_extra.get("router_downgraded") is True
    assert completed.model_extra["router_model"].startswith("draft")
    assert "quality:" in completed.model_extra["router_fallback"]
    if len(events) == 2:
        assert completed.b64_json == events[0].b64_json


def test_the_async_sdk_streams_too(gw: GatewayProcess) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        stream = await client.images.generate(prompt="a sketch of a crane", stream=True, partial_images=0)
        kinds = [event.type async for event in stream]
        await client.close()
        return kinds

    assert asyncio.run(run()) == ["image_generation.completed"]


def test_generate_offers_the_same_stream(gw: GatewayProcess) -> None:
    with httpx.stream(
        "POST",
        gw.url + "/api/v1/generate",
        json={"prompt": "a photo of a bridge", "seed": 2, "partial_images": 1},
        headers={"Accept": "text/event-stream"},
        timeout=60,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kinds = [line.split(":", 1)[1].strip() for line in r.iter_lines() if line.startswith("event:")]
    assert kinds == ["image_generation.partial_image", "image_generation.completed"]


def _png(size: tuple[int, int], alpha_right: bool = False) -> bytes:
    """A test picture: a gradient; with ``alpha_right`` an RGBA mask transparent on the right."""
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    picture = Image.fromarray(ramp)
    if alpha_right:
        alpha = np.full((height, width), 255, np.uint8)
        alpha[:, width // 2 :] = 0
        picture = Image.fromarray(np.dstack([ramp, alpha]), "RGBA")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def test_edits_with_and_without_a_mask_and_variations(gw: GatewayProcess) -> None:
    client = _client(gw)
    source = _png((64, 64))
    plain = client.images.edit(image=("in.png", source, "image/png"), prompt="a sketch in blue", extra_body={"seed": 4})
    edited = np.asarray(_image(plain.data[0].b64_json).convert("RGB"))  # type: ignore[index]
    assert edited.shape == (64, 64, 3)
    again = client.images.edit(image=("in.png", source, "image/png"), prompt="a sketch in blue", extra_body={"seed": 4})
    assert again.data[0].b64_json == plain.data[0].b64_json  # type: ignore[index]  # same picture, seed: same edit

    masked = client.images.edit(
        image=("in.png", source, "image/png"),
        mask=("mask.png", _png((64, 64), alpha_right=True), "image/png"),
        prompt="a sketch of a red door",
        extra_body={"seed": 4, "strength": 1.0},
    )
    painted = np.asarray(_image(masked.data[0].b64_json).convert("RGB"))  # type: ignore[index]
    assert painted.shape == (64, 64, 3)  # what the mask keeps: test_a_mask_keeps_the_unmasked_side

    with pytest.warns(DeprecationWarning):  # the SDK marks variations deprecated; clients still call them
        variation = client.images.create_variation(image=("in.png", source, "image/png"), n=2, size="64x64")
    assert len(variation.data or []) == 2
    with pytest.warns(DeprecationWarning):
        raw = client.images.with_raw_response.create_variation(image=("in.png", source, "image/png"))
    assert raw.http_response.status_code == 200 and raw.headers["x-router-route"]


def test_a_mask_keeps_the_unmasked_side(gw: GatewayProcess) -> None:
    """docs/openai.md: fully transparent pixels are repainted. The rest is kept: near the
    source in absolute terms, not merely less changed than the repainted side (a pipeline
    that ignores the mask and repaints everything at strength 1 changes both alike)."""
    client = _client(gw)
    source = _png((64, 64))
    masked = client.images.edit(
        image=("in.png", source, "image/png"),
        mask=("mask.png", _png((64, 64), alpha_right=True), "image/png"),
        prompt="a sketch of a red door",
        extra_body={"seed": 4, "strength": 1.0},
    )
    painted = np.asarray(_image(masked.data[0].b64_json).convert("RGB")).astype(int)  # type: ignore[index]
    original = np.asarray(Image.open(io.BytesIO(source)).convert("RGB")).astype(int)
    left, right = np.abs(painted - original)[:, :24].mean(), np.abs(painted - original)[:, 40:].mean()
    assert left < 1 and right > 16, (left, right)  # kept exactly (up to rounding); the rest repainted


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ({"image": ("x.png", b"not a picture", "image/png")}, "image"),
        (
            {"image": ("x.png", _png((64, 64)), "image/png"), "mask": ("m.png", _png((32, 32), True), "image/png")},
            "mask",
        ),
        ({"image": ("x.png", _png((64, 64)), "image/png"), "mask": ("m.png", _png((64, 64)), "image/png")}, "mask"),
    ],
)
def test_bad_pictures_are_named(gw: GatewayProcess, files: dict[str, Any], param: str) -> None:
    r = httpx.post(gw.url + "/v1/images/edits", data={"prompt": "x"}, files=files, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_an_edit_without_an_image_or_with_two_is_refused(gw: GatewayProcess) -> None:
    r = httpx.post(gw.url + "/v1/images/edits", data={"prompt": "x"}, files={"other": ("a", b"b")}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "other"
    two = [("image[]", ("a.png", _png((64, 64)), "image/png")), ("image[]", ("b.png", _png((64, 64)), "image/png"))]
    r = httpx.post(gw.url + "/v1/images/edits", data={"prompt": "x"}, files=two, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"


def test_background_moderation_and_the_user_as_a_sticky_key(start_gateway: Start, tmp_path: Path) -> None:
    routes = (ROOT / "routes.yaml").read_text().replace("disk://.router-cache", f"disk://{tmp_path}/cache")
    routes = routes.replace(
        "  - name: quality-low\n",
        "  - name: ab\n    match: { intent: ab }\n    split:\n      - { model: draft, weight: 50 }\n"
        "      - { model: preview, weight: 50, canary: true }\n    sticky: field:user\n    budget_ms: 3000\n"
        "  - name: quality-low\n",
        1,
    )
    gw = start_gateway(routes, name="sticky.yaml")
    client = _client(gw)
    answer = client.images.generate(prompt="a boat", background="opaque", moderation="low")
    assert answer.background == "opaque"
    for user in ("alice", "bob", "carol", "dave"):
        arms = set()
        for _ in range(3):
            ask = {"prompt": "a boat", "safety_identifier": user, "extra_body": {"intent": "ab"}}
            raw = client.images.with_raw_response.generate(**ask)  # type: ignore[arg-type]
            arms.add(raw.headers["x-router-model"])
        assert len(arms) == 1, (user, arms)  # a user stays on one side of the split
