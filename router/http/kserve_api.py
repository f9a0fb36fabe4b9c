"""The KServe v2 / Triton HTTP protocol, with logical model names.

An unmodified ``tritonclient.http`` client pointed at the gateway works: the model in
the URL is a *logical* name (a model alias or a route name) routed by the same rules
as every other request — the prompt is read from the ``PROMPT`` tensor, the intent
from ``X-Intent`` or the ``intent`` request parameter. The answer names the logical
model and the version that served it, and carries the usual ``X-Router-*`` tags.
"""

from __future__ import annotations

import time
from typing import Any

from numpy.typing import NDArray
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router import __version__
from router.backends.base import ImageRequest
from router.errors import InvalidRequest
from router.gateway import Gateway
from router.http.common import (
    MAX_PROMPT_CHARS,
    facts_for,
    gateway_of,
    read_body,
    serve,
    served_headers,
    tag_images,
)
from router.http.encode import encode_off_loop
from router.kserve import InferRequest, decode_request, encode_response, wants_binary
from router.policy.match import RequestFacts, select_route

__all__ = [
    "infer",
    "live",
    "model_metadata",
    "model_ready",
    "parse_infer",
    "ready",
    "repository_index",
    "server_metadata",
]

MAX_INFER_BODY = 1 << 20
_OPTIONAL = {"SEED": "seeds", "STEPS": "steps", "WIDTH": "width", "HEIGHT": "height"}


def _resolve(gateway: Gateway, alias: str) -> str:
    """The concrete model behind a logical name, by the same rules as inference (the
    route it selects, first arm); an unknown name is a 404."""
    return select_route(gateway.table, RequestFacts(prompt="", model=alias)).arms[0].model


async def server_metadata(request: Request) -> Response:
    return JSONResponse(
        {"name": "image-router", "version": __version__, "extensions": ["binary_tensor_data", "parameters"]}
    )


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if await gateway_of(request).ready() else 503)


async def model_metadata(request: Request) -> Response:
    gateway = gateway_of(request)
    alias = request.path_params["model"]
    model = gateway.table.models[_resolve(gateway, alias)]
    meta = await gateway.pool.get(model.backend).model_metadata(model)
    meta["name"] = alias
    return JSONResponse(meta)


async def model_ready(request: Request) -> Response:
    gateway = gateway_of(request)
    model = gateway.table.models[_resolve(gateway, request.path_params["model"])]
    ok = await gateway.pool.get(model.backend).model_ready(model)
    return Response(status_code=200 if ok else 503)


async def repository_index(request: Request) -> Response:
    names = gateway_of(request).table.aliases()
    return JSONResponse([{"name": n, "state": "READY"} for n in names])


_RANGES = {"SEED": (-(2**63), 2**63 - 1), "STEPS": (1, 2**31 - 1), "WIDTH": (1, 2**31 - 1), "HEIGHT": (1, 2**31 - 1)}


def _int_input(array: NDArray[Any] | None, name: str) -> NDArray[Any] | None:
    """An optional integer input, within what the model contract's tensor type holds
    (the model itself checks its own, narrower limits)."""
    if array is None:
        return None
    if array.dtype.kind not in "iu" or array.size == 0:
        raise InvalidRequest(f"{name}: expected an integer tensor", field=name)
    low, high = _RANGES[name]
    if int(array.min()) < low or int(array.max()) > high:
        raise InvalidRequest(f"{name}: must be between {low} and {high}", field=name)
    return array.reshape(-1)


def _image_request(inputs: dict[str, NDArray[Any]]) -> ImageRequest:
    prompt = inputs.get("PROMPT")
    if prompt is None or prompt.dtype != object or prompt.size == 0:
        raise InvalidRequest("PROMPT: a BYTES input is required", field="PROMPT")
    try:
        prompts = tuple(p.decode("utf-8") for p in prompt.reshape(-1))
    except UnicodeDecodeError:
        raise InvalidRequest("PROMPT: not valid UTF-8", field="PROMPT") from None
    if not all(p.strip() for p in prompts):
        raise InvalidRequest("PROMPT: must not be empty", field="PROMPT")
    if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise InvalidRequest(f"PROMPT: longer than {MAX_PROMPT_CHARS} characters", field="PROMPT")
    unknown = set(inputs) - {"PROMPT", *_OPTIONAL}
    if unknown:
        raise InvalidRequest(f"unknown input {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    values: dict[str, Any] = {}
    for name, attr in _OPTIONAL.items():
        array = _int_input(inputs.get(name), name)
        if array is None:
            continue
        if attr == "seeds":
            seeds = array.tolist() if array.size == len(prompts) else [int(array[0])] * len(prompts)
            values["seeds"] = tuple(int(s) for s in seeds)
        else:
            values[attr] = int(array[0])
    return ImageRequest(prompts=prompts, **values)


def parse_infer(body: bytes, header_length: str | None) -> tuple[InferRequest, ImageRequest]:
    """An infer body (and its ``Inference-Header-Content-Length``) as the generation it
    asks for. Every malformed body is an :class:`InvalidRequest` naming what is wrong —
    never anything else (``tests/unit/test_kserve_codec.py`` fuzzes it)."""
    if header_length is not None and not (header_length.isascii() and header_length.isdigit()):
        raise InvalidRequest("Inference-Header-Content-Length must be an integer")
    decoded = decode_request(body, int(header_length) if header_length else None)
    for spec in decoded.outputs or []:
        if spec.get("name") != "IMAGE":
            raise InvalidRequest("the only output is IMAGE", field="outputs")
    return decoded, _image_request(decoded.inputs)


async def infer(request: Request) -> Response:
    started = time.monotonic()
    alias = request.path_params["model"]
    body = await read_body(request, MAX_INFER_BODY)
    decoded, image_request = parse_infer(body, request.headers.get("inference-header-content-length"))
    intent = decoded.parameters.get("intent")
    facts = facts_for(request, image_request.prompts[0], intent if isinstance(intent, str) else None, alias)
    served = await serve(request, facts, image_request, started, random_seeds=False)
    binary = wants_binary(decoded, "IMAGE")
    version = served.result.model_version or served.model.version or ""
    images = await served.result.pixels()

    def encode() -> tuple[bytes, int | None]:
        return encode_response(alias, version, decoded.id, "IMAGE", images, binary)

    # a binary answer is one copy of the tensor: only JSON text scales badly enough to move
    payload, head = encode() if binary else await encode_off_loop(images, encode)
    headers = served_headers(served)
    await tag_images(served, headers)
    if head is None:
        return Response(payload, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(head)
    return Response(payload, media_type="application/octet-stream", headers=headers)
