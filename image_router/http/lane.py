"""The image lane: inference calls straight to their handlers, ahead of Starlette.

KServe's infer paths and the exact ``POST`` paths the app names (the OpenAI generations,
``/api/v1/generate``) are most of a gateway's traffic, and the same few handlers answer
all of them. :class:`GatewayApp` hands them to :class:`ImageLane` before Starlette's
middleware stack; every other request goes through that stack as before.

What the lane does for a request is what the stack would: it gives it its request id
(:func:`~image_router.http.errors.assign_request_id`), records it
(:class:`~image_router.http.observe.Observer`: span, metrics, access log) and answers an
error with the app's own handlers (:func:`~image_router.http.errors.respond_to`). What it
skips is the layering: Starlette's ``ServerErrorMiddleware``, the request-id and
observing middlewares each wrapping ``send`` again, path matching against the route
list, ``ExceptionMiddleware``, the route and endpoint wrappers. Here ``send`` is wrapped
once, for the status and the request-id header together (docs/benchmarks.md, "Later
the same day: one layer for the image lane", measured with `bench/before_after.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from image_router.http import kserve_api
from image_router.http.errors import assign_request_id, echo_header, respond_to
from image_router.http.observe import Observer, api_of

__all__ = ["Endpoint", "GatewayApp", "ImageLane"]

Endpoint = Callable[[Request], Awaitable[Response]]


class ImageLane:
    """Which requests take the lane (:meth:`handler`), and serving one (:meth:`serve`)."""

    def __init__(self, posts: Mapping[str, Endpoint] | None = None, observer: Observer | None = None) -> None:
        self.posts = dict(posts or {})
        self.observer = observer if observer is not None and observer.on else None

    def handler(self, scope: Scope) -> Endpoint | None:
        """The handler of a lane request (its ``path_params`` set), ``None`` for any other."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path = scope["path"]
        handler = self.posts.get(path)
        if handler is not None:
            scope["path_params"] = {}
            return handler
        params = kserve_api.infer_path(path)
        if params is None:
            return None
        scope["path_params"] = params
        return kserve_api.infer  # looked up per call: the module's own

    async def serve(self, handler: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """The request id, the observer around the handler, one ``send`` wrapper."""
        header = assign_request_id(scope)
        observer = self.observer

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive, send)
            try:
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - answered by the handler Starlette would pick
                response = await respond_to(request, exc)
            await response(scope, receive, send)

        api = api_of(scope["path"]) if observer is not None else None
        if observer is not None and api is not None:
            await observer.observed(api, scope, receive, send, answer, header)
            return

        async def send_with_id(message: Message) -> None:
            echo_header(message, header)
            await send(message)

        await answer(scope, receive, send_with_id)


class GatewayApp(Starlette):
    """Starlette with ``lane`` ahead of its middleware stack (``None``: no lane)."""

    def __init__(self, *, lane: ImageLane | None = None, **starlette: Any) -> None:
        super().__init__(**starlette)
        self.lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        handler = lane.handler(scope) if lane is not None else None
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        assert lane is not None
        scope["app"] = self  # what Starlette's own __call__ sets: request.app reads it
        await lane.serve(handler, scope, receive, send)
