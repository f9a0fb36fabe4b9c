"""The one seam between the gateway and an image-serving upstream.

Every upstream (a Triton server, a hosted OpenAI-compatible API) implements
:class:`ImageBackend`. Implementations translate their library's exceptions into the
:mod:`image_router.errors` backend errors *here*, once, so the dispatcher above sees only
:class:`~image_router.errors.BackendRejected`, :class:`~image_router.errors.BackendUnavailable`,
:class:`~image_router.errors.BackendTimeout` or :class:`~image_router.errors.BackendError`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from image_router.config.table import Model
from image_router.errors import BackendError
from image_router.policy.forecast import Forecast, work_units

__all__ = [
    "EncodedImages",
    "ImageBackend",
    "ImageRequest",
    "ImageResult",
    "consecutive_seeds",
    "image_size",
    "sniff_format",
]


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One generation call: one image per prompt (``seeds`` align with ``prompts``)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    upscale: bool = False  # a size over a tier's native_side is made at it and upscaled (resize: upscale)
    # image-to-image (edits, variations): the picture to start from, where to repaint
    init_image: NDArray[Any] | None = field(default=None, compare=False)  # uint8[h, w, 3]
    mask: NDArray[Any] | None = field(default=None, compare=False)  # uint8[h, w], non-zero = repaint
    strength: float | None = None
    # the gateway chose ``seeds`` (the client sent none): a tier that cannot honour a
    # client's seed refuses it by name rather than drop it (image_router/backends/openai.py),
    # but one the gateway drew binds nobody. Marked where they are drawn, so a request
    # that brings its own costs no copy.
    drawn: bool = field(default=False, compare=False)
    # rows computed in one pipeline pass (Triton's ``rows_per_pass`` request parameter):
    # 1, the singleton path every interactive request takes; more only for work that
    # can wait, which a job tier's ``batch_rows`` opts in (image_router/jobs/batch.py)
    rows_per_pass: int = 1

    @property
    def seeded(self) -> bool:
        """The client gave the seeds."""
        return self.seeds is not None and not self.drawn


def consecutive_seeds(base: int, n: int) -> tuple[int, ...]:
    """The seeds of a request for ``n`` images: ``base``, ``base + 1``, …, so the images
    differ and any one of them can be asked for again by its seed."""
    return tuple(base + i for i in range(n))


@dataclass(frozen=True, slots=True)
class EncodedImages:
    """Images as an upstream sent them: base64 text of one format each (``png``,
    ``jpeg`` or ``webp``). An edge asked for that format passes the text through
    untouched; pixels are decoded only when something needs them (another format, a
    tensor, the result cache)."""

    b64: tuple[str, ...]
    fmt: str
    size: tuple[int, int] | None = None  # (width, height) of the first, where read at arrival

    def blobs(self) -> list[bytes]:
        return [base64.b64decode(text) for text in self.b64]


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"RIFF", "webp"))


def sniff_format(head: bytes) -> str | None:
    """The image format of encoded bytes, by their magic number (``None``: not one
    the gateway passes through)."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic) and (fmt != "webp" or head[8:12] == b"WEBP"):
            return fmt
    return None


_PNG_IHDR = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # the signature, then IHDR (13 bytes long)
_HEADER_B64 = 64 << 10  # base64 characters read for a header past the first 1 KiB (a JPEG's SOF after EXIF/ICC)


def image_size(text: str) -> tuple[int, int] | None:
    """``(width, height)`` of an image given as base64 text, from its header alone
    (``None``: no readable size, so nothing can decode it either). A PNG's size is read
    from its IHDR chunk, always the first (the first 32 characters); other formats by
    PIL from the first 1 KiB (WebP, most JPEGs), else 64 KiB, else all of it. Opening a
    PNG with PIL to read its size cost 11 % of the gateway's CPU per request on the
    OpenAI path, for 24 bytes. A header the fast path does not take (a zero or
    out-of-range side, a stray character in its text) goes to PIL, as before. PIL's
    :class:`~PIL.Image.DecompressionBombError` for an absurd size is raised to the caller
    (the size is over any bound)."""
    try:
        head = base64.b64decode(text[:32], validate=True)
    except ValueError:  # a stray character in the header's text: PIL reads it as the decoder will
        head = b""
    if head[:16] == _PNG_IHDR:
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if 0 < width < 2**31 and 0 < height < 2**31:  # else PIL says what is wrong with it
            return width, height
    for chars in sorted({min(n, len(text)) for n in (1024, _HEADER_B64, len(text))}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # callers judge the size
                part = text if chars == len(text) else text[: chars - chars % 4]  # all of it: as blobs() decodes
                with Image.open(io.BytesIO(base64.b64decode(part))) as image:
                    width, height = image.size
                    return int(width), int(height)
        except Image.DecompressionBombError:
            raise
        except Exception:  # noqa: BLE001 - PIL raises many kinds on a truncated or bad file
            continue
    return None


def _decode(encoded: EncodedImages) -> NDArray[Any]:
    try:
        frames = [np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in encoded.blobs()]
        stacked: NDArray[Any] = np.stack(frames).astype(np.uint8, copy=False)
    except Exception as exc:  # PIL raises many kinds on a bad file
        raise BackendError(f"upstream image not understood: {type(exc).__name__}: {exc}") from exc
    return stacked


class ImageResult:
    """What a backend made: ``images`` is ``uint8[batch, height, width, 3]``.

    A result may arrive encoded (:class:`EncodedImages`, from a hosted API): its pixels
    are then decoded on first need, once. On the event loop use ``await pixels()``,
    which decodes in a thread; ``images`` decodes where it is called."""

    __slots__ = ("_pixels", "compute_ns", "encoded", "memo", "model_version", "stored_at")

    def __init__(
        self,
        images: NDArray[Any] | None,
        model_version: str,
        stored_at: float | None = None,
        memo: dict[str, Any] | None = None,
        encoded: EncodedImages | None = None,
        compute_ns: tuple[int, ...] | None = None,
    ) -> None:
        if images is None and encoded is None:
            raise ValueError("an ImageResult needs pixels or encoded images")
        self._pixels = images
        self.model_version = model_version
        self.stored_at = stored_at  # wall time it was made, when it comes from the result cache
        # what the HTTP edge worked out about these pixels (their ids): shared with the
        # cached entry in memory, so a hot hit does not hash them again
        self.memo: dict[str, Any] = {} if memo is None else memo
        self.encoded = encoded
        # nanoseconds per image the model reported (its COMPUTE_NS output); None: it did
        # not say (an older model, a hosted API), and the gateway's own time stands in
        self.compute_ns = compute_ns

    def __len__(self) -> int:
        return len(self._pixels) if self._pixels is not None else len(self.encoded.b64)  # type: ignore[union-attr]

    @property
    def images(self) -> NDArray[Any]:
        if self._pixels is None:
            assert self.encoded is not None
            self._pixels = _decode(self.encoded)
        return self._pixels

    async def pixels(self) -> NDArray[Any]:
        """The pixels, decoded off the event loop when they came encoded."""
        if self._pixels is None:
            assert self.encoded is not None
            self._pixels = await asyncio.to_thread(_decode, self.encoded)
        return self._pixels

    def dimensions(self) -> tuple[int, int] | None:
        """``(width, height)`` of the images, without decoding an encoded one (its
        header is read from the first few kilobytes); ``None`` if that cannot tell."""
        if self._pixels is not None:
            return int(self._pixels.shape[2]), int(self._pixels.shape[1])
        assert self.encoded is not None
        if self.encoded.size is not None:
            return self.encoded.size
        try:
            return image_size(self.encoded.b64[0])
        except Image.DecompressionBombError:
            return None

    def passthrough(self, fmt: str) -> tuple[str, ...] | None:
        """The upstream's own base64 text when it is already ``fmt`` (and no pixels were
        made here since), else ``None``."""
        if self.encoded is not None and self.encoded.fmt == fmt:
            return self.encoded.b64
        return None


class ImageBackend(Protocol):
    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        """Make the images; ``timeout_s`` is propagated upstream (queue timeout)."""
        ...

    async def ready(self) -> bool: ...

    async def model_ready(self, model: Model) -> bool: ...

    async def model_metadata(self, model: Model) -> dict[str, Any]: ...

    async def model_config(self, model: Model) -> dict[str, Any]:
        """The model's configuration as Triton's ``/v2/models/{m}/config`` gives it."""
        ...

    async def model_statistics(self, model: Model) -> dict[str, Any]:
        """Triton's ``/v2/models/{m}/stats`` answer (``{"model_stats": [...]}``)."""
        ...

    def available(self, model: Model) -> bool:
        """False while every endpoint that could serve ``model`` has an open circuit."""
        ...

    def forecast(self, model: Model, extra_ahead: int = 0, units: float = 1.0) -> Forecast | None:
        """When a request of ``units`` of work (:func:`request_units`) for ``model`` sent
        now would finish on the best usable endpoint, with ``extra_ahead`` more requests
        before it (``None``: no endpoint).
        Each backend keeps this from its own sends and answers, per endpoint, so the
        budget policy decides on live queues rather than on a stale quantile."""
        ...

    def snapshot(self) -> list[dict[str, Any]]:
        """Per endpoint state for the admin API (health, circuit, load)."""
        ...

    async def aclose(self) -> None: ...


def request_units(model: Model, request: ImageRequest) -> float:
    """``request``'s work on ``model``'s lane: rows x pixels x steps against the tier's
    own shape (:func:`~image_router.policy.forecast.work_units`), so a 4-image or 1024² request
    is forecast as what it is and its answer teaches the lane the time per unit. An
    upscaled request is made at most at the tier's native side: its rows alone count."""
    steps, default = request.steps, model.default_steps
    if request.upscale:
        return work_units(len(request.prompts), steps=steps, default_steps=default)
    return work_units(len(request.prompts), request.width, request.height, steps, model.native_side, default)
