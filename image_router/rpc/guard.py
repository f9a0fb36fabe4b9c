"""The gRPC edge's guard: who may call, decided from metadata before any message is read.

gRPC hands a handler its request already decoded, so a check inside the handler comes
after the work an attacker wants the gateway to do: a ~6 KB gzip message with no key
stalled the event loop 650 ms while protobuf parsed what it inflated to, and a malformed
body got ``INVALID_ARGUMENT`` before the key check (issue 30, items 2-3).
:class:`Guard` is a server interceptor, so it runs on the call's metadata alone:

- in ``tenants: {mode: keys}`` a call to the KServe service without a valid
  ``authorization`` key is answered ``UNAUTHENTICATED`` by a handler whose deserializer
  never parses the body (``ServerLive`` and ``ServerReady`` stay open: probes; so does
  ``grpc.health.v1``);
- a ``ModelStreamInfer`` stream must send its first request within
  ``first_message_s``, or it ends ``DEADLINE_EXCEEDED``: 3,000 idle streams no longer
  hold the call slots that authenticated calls need.

The limits that need no code (message size, streams per connection, keep-alive and idle
connections) are the server's options: :mod:`image_router.rpc.server`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from image_router.errors import RouterError
from image_router.rpc.service import SERVICE_NAME

__all__ = ["OPEN_METHODS", "Guard"]

OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # probes: no key, no body worth reading
Authenticate = Callable[[str | None], object]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


def _unread(data: bytes) -> None:
    """The deserializer of a refused call: the bytes are dropped, never parsed."""
    return None


def _refusal(code: grpc.StatusCode, message: str, streaming: bool) -> grpc.RpcMethodHandler[Any, Any]:
    trailer = (("x-router-error-code", "unauthorized"),)

    async def unary(request: None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message, trailer)

    async def stream(requests: AsyncIterator[None], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, message, trailer)
        yield None  # pragma: no cover - abort raises

    if streaming:
        return grpc.stream_stream_rpc_method_handler(stream, request_deserializer=_unread)
    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_unread)


def _first_message_within(handler: grpc.RpcMethodHandler[Any, Any], seconds: float) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` (a stream-stream one) ending the call if its first request takes
    longer than ``seconds`` to come."""
    inner: Callable[..., AsyncIterator[Any]] = handler.stream_stream  # type: ignore[assignment]  # aio: async

    async def behaviour(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        it = aiter(requests)
        try:
            async with asyncio.timeout(seconds):
                first = await anext(it)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no request on the stream within {seconds:g} s")
            return

        async def chained() -> AsyncIterator[Any]:
            yield first
            async for request in it:
                yield request

        async for answer in inner(chained(), context):
            yield answer

    return grpc.stream_stream_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class Guard(grpc.aio.ServerInterceptor):
    """Authentication from metadata and the first-message deadline of streams.

    ``authenticate`` is the gateway's (it reads the table in force, so a reload that
    turns keys mode on or off applies to the next call); it raises a
    :class:`~image_router.errors.RouterError` (401) for a missing or wrong key in keys mode."""

    def __init__(self, authenticate: Authenticate, first_message_s: float = 30.0) -> None:
        self.authenticate = authenticate
        self.first_message_s = first_message_s

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if service != SERVICE_NAME:
            return await continuation(handler_call_details)  # grpc.health.v1, reflection: not ours
        streaming = method == "ModelStreamInfer"
        if method not in OPEN_METHODS:
            authorization = None
            for key, value in handler_call_details.invocation_metadata or ():
                if key == "authorization" and isinstance(value, str):
                    authorization = value
                    break
            try:
                self.authenticate(authorization)
            except RouterError as exc:
                return _refusal(grpc.StatusCode.UNAUTHENTICATED, exc.message, streaming)
        handler = await continuation(handler_call_details)
        if streaming and handler is not None and handler.stream_stream is not None:
            return _first_message_within(handler, self.first_message_s)
        return handler
