"""The KServe v2 / Triton HTTP protocol, with logical model names.

An unmodified ``tritonclient.http`` client pointed at the gateway works: the model in
the URL is a *logical* name (a model alias or a route name) routed by the same rules
as every other request — the prompt is read from the ``PROMPT`` tensor, the intent
from ``X-Intent`` or the ``intent`` request parameter. ``priority`` and ``timeout``
are honoured as Triton honours them (:func:`image_router.inference.infer_options`). The
answer names the logical model, carries the usual ``X-Router-*`` tags, and says in its
``parameters`` which route, model and version served it. Bodies may come compressed
(``Content-Encoding: gzip | deflate``, as ``tritonclient``'s
``request_compression_algorithm`` sends them) and answers are compressed on
``Accept-Encoding``. ``/config`` and ``/stats`` answer for the model a name resolves
to, under that name, as Triton's own tools expect.
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from image_router import __version__
from image_router.backends.base import ImageRequest
from image_router.errors import InvalidRequest, PayloadTooLarge
from image_router.http.common import (
    facts_for,
    gateway_of,
    header,
    read_body,
    serve,
    served_headers,
    tag_images,
    tenant_of,
)
from image_router.http.encode import encode_off_loop
from image_router.inference import image_request, infer_options, served_parameters
from image_router.kserve import InferRequest, decode_request, encode_response, wants_binary
from image_router.model_states import repository_states

__all__ = [
    "infer",
    "infer_path",
    "live",
    "model_config",
    "model_metadata",
    "model_ready",
    "model_stats",
    "parse_infer",
    "ready",
    "repository_index",
    "server_metadata",
]

MAX_INFER_BODY = 1 << 20
COMPRESS_MIN_BYTES = 1024  # smaller answers are sent as they are
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def server_metadata(request: Request) -> Response:
    return JSONResponse(
        {"name": "image-router", "version": __version__, "extensions": ["binary_tensor_data", "parameters"]}
    )


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if await gateway_of(request).ready() else 503)


async def model_metadata(request: Request) -> Response:
    return JSONResponse(await gateway_of(request).model_metadata(request.path_params["model"]))


async def model_config(request: Request) -> Response:
    return JSONResponse(await gateway_of(request).model_config(request.path_params["model"]))


async def model_stats(request: Request) -> Response:
    """One name's statistics, or (``/v2/models/stats``) every name's."""
    gateway = gateway_of(request)
    alias = request.path_params.get("model")
    if alias is not None:
        return JSONResponse(await gateway.model_statistics(alias))
    entries = []
    for name in gateway.aliases():
        entries += (await gateway.model_statistics(name))["model_stats"]
    return JSONResponse({"model_stats": entries})


async def model_ready(request: Request) -> Response:
    ok = await gateway_of(request).model_ready(request.path_params["model"])
    return Response(status_code=200 if ok else 503)


async def repository_index(request: Request) -> Response:
    """Every servable name with its backend's state now (:mod:`image_router.model_states`)."""
    states = await repository_states(gateway_of(request))
    return JSONResponse(
        [{"name": m.name, "state": m.state, **({"reason": m.reason} if m.reason else {})} for m in states]
    )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A ``gzip`` or ``deflate`` body, refusing (413) one that inflates past ``limit``
    before inflating the rest: a small bomb must not cost the memory it claims."""
    wbits = _WBITS.get(encoding.strip().lower())
    if wbits is None:
        raise InvalidRequest(
            f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", field="Content-Encoding"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding}: {exc}", field="Content-Encoding") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"body inflates past the {limit}-byte limit", limit=limit)
    if not inflater.eof:
        raise InvalidRequest(f"body is truncated {encoding}", field="Content-Encoding")
    return out


_INFLATING: asyncio.Semaphore | None = None


def _inflating() -> asyncio.Semaphore:
    global _INFLATING
    if _INFLATING is None:  # made on first use, inside the running loop
        _INFLATING = asyncio.Semaphore(1)
    return _INFLATING


def _inflated_infer(body: bytes, encoding: str, header_length: str | None) -> tuple[InferRequest, ImageRequest]:
    return parse_infer(_inflate(body, encoding, MAX_INFER_BODY), header_length)


def _accepted_encoding(accept: str | None) -> str | None:
    """The first of gzip, deflate the client accepts (q=0 refuses)."""
    if not accept:
        return None
    return _first_accepted(accept)


@functools.lru_cache(maxsize=256)  # a client sends the same header every time
def _first_accepted(accept: str) -> str | None:
    offered = {}
    for part in accept.lower().split(","):
        name, _, params = part.strip().partition(";")
        refused = params.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
        offered[name.strip()] = not refused
    for encoding in ("gzip", "deflate"):
        if offered.get(encoding):
            return encoding
    return None


def _compress(data: bytes, encoding: str) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return deflater.compress(data) + deflater.flush()


def parse_infer(body: bytes, header_length: str | None) -> tuple[InferRequest, ImageRequest]:
    """An infer body (and its ``Inference-Header-Content-Length``) as the generation it
    asks for. Every malformed body is an :class:`InvalidRequest` naming what is wrong —
    never anything else (``tests/unit/test_kserve_codec.py`` fuzzes it)."""
    if header_length is not None and not (
        header_length.isascii() and header_length.isdigit() and len(header_length) <= 10  # int() refuses 4300+ digits
    ):
        raise InvalidRequest(
            "Inference-Header-Content-Length must be an integer of at most 10 digits",
            field="Inference-Header-Content-Length",
        )
    decoded = decode_request(body, int(header_length) if header_length else None)
    for spec in decoded.outputs or []:
        if spec.get("name") != "IMAGE":
            raise InvalidRequest("the only output is IMAGE", field="outputs")
    return decoded, image_request(decoded.inputs)


async def infer(request: Request) -> Response:
    started = time.monotonic()
    tenant_of(request)  # a caller without a valid key learns nothing about its body
    alias = request.path_params["model"]
    body = await read_body(request, MAX_INFER_BODY)
    content_encoding = header(request, "content-encoding")
    header_length = header(request, "inference-header-content-length")
    if content_encoding and content_encoding.strip().lower() != "identity":
        # after the key check; a 1 KB compressed body may stand for 1 MiB of tensors
        # (~150 ms to decode): inflated and decoded in a worker thread, one at a time,
        # so the loop keeps the GIL most of the time and a flood of them only queues
        async with _inflating():
            decoded, image_req = await asyncio.to_thread(_inflated_infer, body, content_encoding, header_length)
    else:
        decoded, image_req = parse_infer(body, header_length)
    options = infer_options(decoded.parameters)
    facts = facts_for(request, image_req.prompts[0], options.intent, alias)
    served = await serve(request, facts, image_req, started, options)
    binary = wants_binary(decoded, "IMAGE")
    version = served.version
    images = await served.result.pixels()
    parameters = served_parameters(served)

    def encode() -> tuple[bytes, int | None]:
        return encode_response(alias, version, decoded.id, "IMAGE", images, binary, parameters)

    # a binary answer is one copy of the tensor: only JSON text scales badly enough to move
    payload, head = encode() if binary else await encode_off_loop(images, encode)
    headers = served_headers(served)
    await tag_images(served, headers)
    encoding = _accepted_encoding(header(request, "accept-encoding"))
    if encoding is not None and len(payload) >= COMPRESS_MIN_BYTES:
        payload = await encode_off_loop(images, lambda: _compress(payload, encoding))
        headers["Content-Encoding"] = encoding
        headers["Vary"] = "Accept-Encoding"
    if head is None:
        return Response(payload, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(head)
    return Response(payload, media_type="application/octet-stream", headers=headers)


def infer_path(path: str) -> dict[str, str] | None:
    """The path parameters of ``/v2/models/{model}[/versions/{version}]/infer``, as
    Starlette's routes for it would give them (``None``: another path)."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return {"model": parts[0]}
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return {"model": parts[0], "version": parts[2]}
    return None
