"""The floor of a Python proxy here: a bare ASGI app on uvicorn (uvloop, httptools) that
forwards the KServe body to Triton with the gateway's own HTTP/1.1 client and returns
the answer — no routing, budgets, metrics or logs. ``bench/peers.py`` runs it beside
the gateway, Envoy and nginx: the gap between it and the gateway is what the gateway's
own work costs. ``starlette_app`` is the same proxy as a one-route Starlette app (a
``Request`` in, a ``Response`` out, Starlette's own middleware): the floor of the stack
the gateway is built on.

    UPSTREAM=127.0.0.1:8000 .venv/bin/uvicorn --app-dir bench asgi_floor:app --port 9000
    UPSTREAM=127.0.0.1:8000 .venv/bin/uvicorn --app-dir bench asgi_floor:starlette_app --port 9001
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from image_router.backends._http1 import Http1Pool

_pool: Http1Pool | None = None


def _upstream() -> Http1Pool:
    global _pool
    if _pool is None:
        host, port = os.environ["UPSTREAM"].split(":")
        _pool = Http1Pool(host, int(port))
    return _pool


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    length = dict(scope["headers"]).get(b"inference-header-content-length", b"").decode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length}
    answer = await _upstream().request(scope["path"], b"".join(chunks), headers)
    head = answer.headers.get("inference-header-content-length", "").encode()
    await send({
        "type": "http.response.start",
        "status": answer.status,
        "headers": [(b"content-type", b"application/octet-stream"), (b"inference-header-content-length", head)],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": answer.body})


async def _forward(request: Request) -> Response:
    length = request.headers.get("inference-header-content-length", "")
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length}
    answer = await _upstream().request(request.url.path, await request.body(), headers)
    head = answer.headers.get("inference-header-content-length", "")
    return Response(answer.body, answer.status, {"Inference-Header-Content-Length": head}, "application/octet-stream")


starlette_app = Starlette(routes=[Route("/v2/models/{model}/infer", _forward, methods=["POST"])])
