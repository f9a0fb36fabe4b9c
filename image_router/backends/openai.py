"""A hosted, OpenAI-compatible image API as a tier (``POST {base}/images/generations``).

The API key comes from the config (``${ENV}``-interpolated) as a ``SecretStr`` and
is only ever put in the ``Authorization`` header: never in logs, errors or the admin
view. Only the configured base URL is contacted.

The images come back as the upstream's base64 text (:class:`EncodedImages`), checked
by their magic number but not decoded: an answer in the same format passes them
through untouched, and pixels are made only when something needs them. Decoding and
re-encoding every image cost 2.2-3.4 ms of gateway CPU per request. The call goes
through the same small HTTP/1.1 client as Triton's infer calls (``_http1``), with
the answer parsed by orjson.

Token ``usage``: an answer's ``usage`` object (GPT-image's token counts) is kept on the
result (:class:`HostedResult`), parsed once with the images, for a ``tokens`` price
(:mod:`image_router.billing.tokens`); an upstream that sends none, or one not understood,
leaves it ``None`` (the tier's per-image price applies).

Bounds: an answer body over :data:`MAX_ANSWER_BYTES` is refused while it arrives (the
connection is closed), and an image over :data:`MAX_PIXELS` is refused from its header,
before anything decodes it; so is an image whose size its header does not give (its
bound could not be kept).

Fields: ``seed`` and ``steps`` go upstream only where the backend's ``accepts:`` names
them (OpenAI's own images API takes neither, so the default accepts none); a request
that carries one the upstream does not take is refused by name (400, ``field``), never
silently dropped. Seeds the gateway drew itself are not the client's and are not sent.

Readiness is real: the tier is ready while its upstream answered within
:data:`ANSWERED_FRESH_S`, else when a cheap probe (``GET {base}/models``, bounded by
:data:`PROBE_TIMEOUT_S`, its result kept :data:`PROBE_EVERY_S`) gets an answer that is
not a server error or a refused key. An upstream without a ``/models`` route still
answers it (404): reachable is what is asked.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from PIL import Image

from image_router.backends._http1 import AnswerTooLarge, Http1Pool
from image_router.backends.base import EncodedImages, ImageRequest, ImageResult, image_size, sniff_format
from image_router.billing.tokens import Tokens
from image_router.config.table import Backend, Model
from image_router.errors import BackendError, BackendRejected, BackendUnavailable
from image_router.policy.circuit import CircuitBreaker
from image_router.policy.forecast import Forecast, Lane

__all__ = [
    "ANSWERED_FRESH_S",
    "MAX_ANSWER_BYTES",
    "MAX_PIXELS",
    "HostedResult",
    "OpenAIImagesBackend",
    "parse_answer",
    "parse_images",
]

MAX_ANSWER_BYTES = 64 << 20  # n images of base64 text; a hosted 1024x1024 PNG is 2-4 MiB
MAX_PIXELS = 4096 * 4096  # per image, read from its header before any decode
ANSWERED_FRESH_S = 10.0  # an answer this recent says the upstream is up
PROBE_EVERY_S = 2.0  # a probe's result is kept this long (readiness is polled every second)
PROBE_TIMEOUT_S = 1.0


class HostedResult(ImageResult):
    """A hosted upstream's images and the token ``usage`` its answer reported (``None``:
    it reported none). Kept only for the answer it came with: a stored copy of the
    images is a new result without it."""

    __slots__ = ("tokens",)

    def __init__(self, encoded: EncodedImages, tokens: Tokens | None) -> None:
        super().__init__(None, "", encoded=encoded)
        self.tokens = tokens


def parse_images(body: bytes) -> EncodedImages:
    """An ``images/generations`` answer as the images it holds, all of one format;
    anything else is a :class:`BackendError` naming what was wrong."""
    encoded = parse_answer(body).encoded
    assert encoded is not None  # a HostedResult always holds its encoded images
    return encoded


def parse_answer(body: bytes) -> HostedResult:
    """An ``images/generations`` answer as its images (all of one format) and the token
    counts of its ``usage``; bad images are a :class:`BackendError` naming what was wrong
    (a ``usage`` not understood is only not believed: the images are what was asked)."""
    try:
        answer = orjson.loads(body)
        texts = tuple(str(item["b64_json"]) for item in answer["data"])
    except (ValueError, KeyError, TypeError) as exc:  # orjson's errors are ValueErrors
        raise BackendError(f"upstream answer not understood: {type(exc).__name__}: {exc}") from exc
    usage = answer.get("usage") if isinstance(answer, dict) else None
    return HostedResult(_encoded(texts), Tokens.of(usage))


def _encoded(texts: tuple[str, ...]) -> EncodedImages:
    if not texts:
        raise BackendError("upstream answer not understood: no images in data")
    formats = set()
    for text in texts:
        try:
            head = base64.b64decode(text[:24], validate=True)  # 18 bytes: every magic number
        except ValueError:
            raise BackendError("upstream answer not understood: b64_json is not base64") from None
        formats.add(sniff_format(head))
    if len(formats) != 1 or None in formats:
        raise BackendError("upstream answer not understood: images are not all PNG, JPEG or WebP of one kind")
    fmt = formats.pop()
    assert fmt is not None
    sizes = []
    for text in texts:
        try:
            size = image_size(text)
        except Image.DecompressionBombError:  # a size PIL will not even open: over any bound
            size = (MAX_PIXELS + 1, 1)
        if size is None:  # no size read is no bound kept: what a decoder would make of it is unknown
            raise BackendError("upstream answer not understood: an image's size cannot be read from its header")
        if size[0] * size[1] > MAX_PIXELS:
            raise BackendError(f"upstream image over {MAX_PIXELS} pixels: refused before decoding")
        sizes.append(size)
    return EncodedImages(texts, fmt, sizes[0])


class OpenAIImagesBackend:
    def __init__(self, spec: Backend) -> None:
        self.spec = spec
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lanes: dict[str, Lane] = {}
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.api_key is not None:
            self._headers["Authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
        base = urlsplit(spec.url).path.rstrip("/")
        self._path, self._models_path = base + "/images/generations", base + "/models"
        self._pool = Http1Pool.for_url(spec.url, spec.max_connections, spec.connect_timeout_s, MAX_ANSWER_BYTES)
        self._answered = -math.inf  # monotonic time of the upstream's last answer
        self._probed: tuple[float, bool] = (-math.inf, False)
        self._probing = asyncio.Lock()

    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        if len(set(request.prompts)) > 1:
            raise BackendRejected("a hosted backend takes one prompt per request")
        if request.init_image is not None:
            raise BackendRejected("INIT_IMAGE: a hosted backend here makes images from prompts only")
        self._check_fields(request)
        breaker = self._breaker(model)
        if not breaker.allow(time.monotonic()):
            raise BackendUnavailable(f"circuit open for {model.name}")
        lane = self._lane(model)
        ticket = lane.send(time.monotonic())
        try:
            result = await self._generate(model, request)
        except BackendRejected:
            lane.done(ticket, time.monotonic(), ok=False)
            breaker.record(time.monotonic(), True)
            raise
        except asyncio.CancelledError:
            lane.abandon(ticket, time.monotonic())
            breaker.record(time.monotonic(), False)
            raise
        except BaseException:
            lane.done(ticket, time.monotonic(), ok=False)
            breaker.record(time.monotonic(), False)
            raise
        lane.done(ticket, time.monotonic(), ok=True)
        breaker.record(time.monotonic(), True)
        return result

    def _check_fields(self, request: ImageRequest) -> None:
        """Refuse, by name, a field the client sent that this upstream does not take."""
        for name, given in (("seed", request.seeded), ("steps", request.steps is not None)):
            if given and name not in self.spec.accepts:
                raise BackendRejected(
                    f"{name}: the hosted tier {self.spec.name!r} does not take {name} (its upstream API has no such "
                    f"field; the backend's accepts: lists what it takes)",
                    field=name,
                )

    def _lane(self, model: Model) -> Lane:
        """A hosted API runs requests side by side: its lane has no queue to model."""
        lane = self._lanes.get(model.lane_key)
        if lane is None:
            lane = self._lanes[model.lane_key] = Lane(model.latency_hint_ms / 1000, servers=None)
        return lane

    def forecast(self, model: Model, extra_ahead: int = 0, units: float = 1.0) -> Forecast | None:
        """``units`` is not used: a hosted API makes a request's images side by side, as
        far as anyone can tell from outside, so its lane learns per request."""
        if not self.available(model):
            return None
        return self._lane(model).forecast(time.monotonic(), extra_ahead)

    def _breaker(self, model: Model) -> CircuitBreaker:
        breaker = self._breakers.get(model.name)
        if breaker is None:
            breaker = self._breakers[model.name] = CircuitBreaker(self.spec.circuit)
        return breaker

    def available(self, model: Model) -> bool:
        return self._breaker(model).would_allow(time.monotonic())

    async def _generate(self, model: Model, request: ImageRequest) -> ImageResult:
        body: dict[str, Any] = {
            "model": model.remote_name,
            "prompt": request.prompts[0],
            "n": len(request.prompts),
            "response_format": "b64_json",
        }
        if request.width and request.height:
            body["size"] = f"{request.width}x{request.height}"
        if request.seeded and request.seeds:
            body["seed"] = request.seeds[0]  # n images from one call: the upstream varies them
        if request.steps is not None:
            body["steps"] = request.steps
        try:  # timed by the caller (Attempts.call's timeout of ``timeout_s``): one timer, not two
            response = await self._pool.request(self._path, orjson.dumps(body), self._headers)
        except OSError as exc:
            raise BackendUnavailable(f"connection failed: {type(exc).__name__}") from exc
        except AnswerTooLarge as exc:
            raise BackendError(f"upstream answer too large: {exc}") from None
        status = response.status
        if _reachable(status):
            self._answered = time.monotonic()
        if status >= 400:
            kind: type[BackendError] = BackendRejected if status in (400, 422) else BackendUnavailable
            if status not in (400, 422, 429) and status < 500:
                kind = BackendError
            raise kind(f"upstream answered {status}", upstream_status=status)
        if status != 200:  # a redirect or an empty answer: not followed, not understood
            raise BackendError(f"upstream answered {status}", upstream_status=status)
        return parse_answer(response.body)

    async def ready(self) -> bool:
        """Up if it answered recently, else as a (cached) probe finds it."""
        known = self._healthy(time.monotonic())
        if known is not None:
            return known
        async with self._probing:  # one probe at a time; the others read its result
            now = time.monotonic()
            known = self._healthy(now)
            if known is None:
                known = await self._probe()
                self._probed = (time.monotonic(), known)
            return known

    def _healthy(self, now: float) -> bool | None:
        """What is known without asking: ``None`` when only a probe can tell."""
        if now - self._answered <= ANSWERED_FRESH_S:
            return True
        at, ok = self._probed
        return ok if now - at < PROBE_EVERY_S else None

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                response = await self._pool.request(self._models_path, b"", self._headers, method="GET")
        except (TimeoutError, OSError, AnswerTooLarge):
            return False
        return _reachable(response.status)

    async def model_ready(self, model: Model) -> bool:
        """The upstream is up and this model's circuit lets calls through."""
        return self.available(model) and await self.ready()

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        return {"name": model.name, "versions": [], "platform": "openai", "inputs": [], "outputs": []}

    async def model_config(self, model: Model) -> dict[str, Any]:
        return {"name": model.name, "platform": "openai", "backend": "openai", "max_batch_size": 0}

    async def model_statistics(self, model: Model) -> dict[str, Any]:
        return {"model_stats": []}  # a hosted API publishes none

    def snapshot(self) -> list[dict[str, Any]]:
        circuits = {m: b.state for m, b in self._breakers.items()}
        healthy = self._healthy(time.monotonic())  # no call from here: the last answer or probe says
        return [{"url": self.spec.url, "healthy": bool(healthy), "model_circuits": circuits}]

    async def aclose(self) -> None:
        await self._pool.aclose()


def _reachable(status: int) -> bool:
    """An answer from a working upstream that takes our key (a 404 for a route it does
    not have, a 400 for a bad request, a 429 for a busy one still say so)."""
    return status < 500 and status not in (401, 403)
