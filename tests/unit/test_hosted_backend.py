"""A hosted tier's pure parts: an image over the pixel cap is refused from its header
(before anything decodes it); what is known of the upstream's health without asking."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import orjson
import pytest
from PIL import Image

from image_router.backends.base import ImageResult, image_size
from image_router.backends.openai import ANSWERED_FRESH_S, MAX_PIXELS, OpenAIImagesBackend, parse_images
from image_router.config.table import Backend
from image_router.errors import BackendError


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size, with a few bytes of pixels behind it: what an upstream
    could send to make the gateway allocate ``width x height`` when it decodes."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def answer(*images: bytes) -> bytes:
    return orjson.dumps({"data": [{"b64_json": base64.b64encode(i).decode()} for i in images]})


def test_an_image_over_the_pixel_cap_is_refused_from_its_header() -> None:
    assert parse_images(answer(png_header(64, 64))).fmt == "png"
    side = int(MAX_PIXELS**0.5) + 1
    with pytest.raises(BackendError, match="pixels"):
        parse_images(answer(png_header(64, 64), png_header(side, side)))
    with pytest.raises(BackendError, match="pixels"):
        parse_images(answer(png_header(100_000, 100_000)))  # past PIL's own bomb bound too


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("size", [(1, 1), (64, 48), (1024, 1536)])
def test_an_images_size_is_read_from_its_header_as_pil_reads_it(fmt: str, size: tuple[int, int]) -> None:
    out = io.BytesIO()
    Image.new("RGB", size).save(out, fmt)
    text = base64.b64encode(out.getvalue()).decode()
    assert image_size(text) == size
    encoded = parse_images(answer(out.getvalue()))
    assert encoded.size == size, "read once, when the answer arrives"
    assert ImageResult(None, "", encoded=encoded).dimensions() == size


def test_a_pngs_size_needs_no_pil_and_an_unreadable_header_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("PIL opened a PNG to read its size")

    monkeypatch.setattr(Image, "open", refuse)
    assert image_size(base64.b64encode(png_header(5000, 3)).decode()) == (5000, 3)
    monkeypatch.undo()
    assert image_size("not base64 at all!") is None
    assert image_size(base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()) is None


def test_a_stray_character_or_a_bad_side_does_not_get_an_image_past_the_pixel_cap() -> None:
    side = int(MAX_PIXELS**0.5) + 1
    text = base64.b64encode(png_header(side, side)).decode()
    for stray in (text[:25] + "\n" + text[25:], text[:3] + "\n" + text[3:]):  # b64decode drops it
        with pytest.raises(BackendError, match=r"pixels|is not base64"):  # refused either way
            parse_images(orjson.dumps({"data": [{"b64_json": stray}]}))
    for width, height in ((0, 5), (5, 0)):  # sides PIL refuses: no size, not taken
        assert image_size(base64.b64encode(png_header(width, height)).decode()) is None
        with pytest.raises(BackendError, match="size cannot be read"):
            parse_images(answer(png_header(width, height)))
    with pytest.raises(BackendError, match="pixels"):  # past 2**31 a side: PIL's bomb bound, over ours
        parse_images(answer(png_header(2**31, 5)))


def test_health_is_known_from_a_recent_answer_or_probe_and_asked_otherwise() -> None:
    backend = OpenAIImagesBackend(Backend("hosted", "openai", "http://127.0.0.1:9/v1"))
    now = time.monotonic()
    assert backend._healthy(now) is None, "nothing known: a probe must ask"
    assert backend.snapshot()[0]["healthy"] is False
    backend._answered = now
    assert backend._healthy(now) is True and backend.snapshot()[0]["healthy"] is True
    assert backend._healthy(now + ANSWERED_FRESH_S + 1) is None, "an old answer says nothing"
    backend._probed = (now + ANSWERED_FRESH_S + 1, False)
    assert backend._healthy(now + ANSWERED_FRESH_S + 1.5) is False
