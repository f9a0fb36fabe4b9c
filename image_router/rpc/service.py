"""``inference.GRPCInferenceService`` over the data plane, with logical model names.

An unmodified ``tritonclient.grpc`` client (sync, aio or streaming) pointed at the
gateway works as against Triton, and its requests are routed exactly like HTTP ones:
the model name is a logical name (or ``auto``); metadata plays the part of headers
(``x-user-id`` for sticky cohorts, ``x-intent``, ``x-canary``, ``x-priority``,
``cache-control``, ``traceparent``); the ``priority`` and ``timeout`` parameters are
read as Triton reads them; and the call's deadline caps the route's budget, so a
client that allows 800 ms gets an answer — downgraded if need be — within 800 ms.
What served a request is in the initial metadata (``x-router-route``,
``x-router-model``, …) and, for every protocol including the stream, in the answer's
``parameters``.

The methods are registered with a lenient deserializer: a message that is not valid
protobuf reaches the method as :class:`Malformed` and is answered ``INVALID_ARGUMENT``
naming the message type (grpcio's own handling answers ``UNKNOWN`` with an exception's
class name). RPCs the gateway has no business answering (loading models, shared
memory, trace and log settings) are not registered: gRPC answers ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from image_router import __version__
from image_router.ask import Ask
from image_router.errors import InvalidRequest, RouterError
from image_router.gateway import Gateway
from image_router.inference import image_request, infer_options, served_parameters, served_tags
from image_router.model_states import repository_states
from image_router.policy.match import RequestFacts
from image_router.rpc.status import grpc_status, trailing_metadata
from image_router.rpc.tensors import decode_inputs, encode_image_response, parameters_of
from image_router.served import Served
from image_router.telemetry import Tracing
from image_router.telemetry.requests import Recorder, outcome_tags
from image_router.telemetry.spans import end_server_span, start_server_span

__all__ = ["SERVICE_NAME", "KServeService", "Malformed"]

log = logging.getLogger("router.rpc")
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

DEADLINE_MARGIN_S = 0.02  # kept back from a client's deadline for the answer to travel
STREAM_INFLIGHT = 64  # requests of one stream generating at once; the stream is read no further meanwhile
SERVICE_NAME = "inference.GRPCInferenceService"
_SERVICE = f"/{SERVICE_NAME}/"
_TRACE_KEYS = ("traceparent", "tracestate", "baggage")


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request message that did not parse."""

    kind: str
    reason: str


def _lenient(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Malformed(message.DESCRIPTOR.full_name, str(exc))

    return parse


def _malformed_error(request: Malformed) -> RouterError:
    return InvalidRequest(f"the request is not a valid {request.kind} message: {request.reason}")


class _Failed(Exception):
    """A gateway error to be sent as the call's status (after it was recorded)."""

    def __init__(self, error: RouterError) -> None:
        self.error = error


def _metadata(context: Context) -> dict[str, str]:
    """The call's metadata as lower-case headers (binary ``-bin`` entries left out)."""
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if not key.endswith("-bin") and isinstance(value, str):
            out[key.lower()] = value
    return out


_UNARY = {  # method: (request, response) messages
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


class KServeService:
    def __init__(self, gateway: Gateway, recorder: Recorder, tracing: Tracing) -> None:
        self.gateway = gateway
        self.recorder = recorder
        self.tracer = tracing.tracer

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods, each behind a deserializer that never raises."""

        def guarded(method: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Awaitable[Any]]:
            async def call(request: Any, context: Context) -> Any:
                if isinstance(request, Malformed):
                    error = _malformed_error(request)
                    await context.abort(grpc_status(error), error.message, trailing_metadata(error))
                return await method(request, context)

            return call

        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                guarded(getattr(self, name)),
                request_deserializer=_lenient(request),
                response_serializer=response.SerializeToString,
            )
            for name, (request, response) in _UNARY.items()
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.ModelStreamInfer,
            request_deserializer=_lenient(pb.ModelInferRequest),
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    # -- health and metadata ----------------------------------------------------------

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=await self.gateway.ready())

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name="image-router", version=__version__, extensions=["binary_tensor_data", "parameters"]
        )

    async def ModelReady(self, request: Any, context: Context) -> Any:
        ready = await self._control(context, self.gateway.model_ready(request.name))
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        meta = await self._control(context, self.gateway.model_metadata(request.name))
        return json_format.ParseDict(meta, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    async def ModelConfig(self, request: Any, context: Context) -> Any:
        config = await self._control(context, self.gateway.model_config(request.name))
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse(), ignore_unknown_fields=True)

    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        names = [request.name] if request.name else self.gateway.aliases()
        entries: list[dict[str, Any]] = []
        for name in names:
            entries += (await self._control(context, self.gateway.model_statistics(name)))["model_stats"]
        return json_format.ParseDict({"model_stats": entries}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        """Each name's real state from its backend (:mod:`image_router.model_states`)."""
        states = await repository_states(self.gateway)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(name=m.name, state=m.state, reason=m.reason) for m in states])

    async def _control(self, context: Context, call: Awaitable[T]) -> T:
        try:
            return await call
        except RouterError as exc:
            await context.abort(grpc_status(exc), exc.message, trailing_metadata(exc))
            raise  # abort raises; this is for the type checker

    # -- inference ----------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        metadata = _metadata(context)
        try:
            response, served = await self._observed("ModelInfer", request, metadata, context.time_remaining())
        except _Failed as failed:
            await context.abort(grpc_status(failed.error), failed.error.message, trailing_metadata(failed.error))
            raise
        await context.send_initial_metadata(tuple((k.lower(), v) for k, v in served_tags(served).items()))
        return response

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        """Each request is answered on the stream as soon as it is done (not in order),
        with its ``id``; a failed one gets ``error_message`` and the stream goes on.
        The stream's deadline caps every request's budget."""
        metadata = _metadata(context)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_INFLIGHT)
        running: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                if isinstance(request, Malformed):
                    error = _malformed_error(request)
                    await answers.put(pb.ModelStreamInferResponse(error_message=error.message))
                    return
                response, _ = await self._observed("ModelStreamInfer", request, metadata, context.time_remaining())
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except _Failed as failed:
                echo = pb.ModelInferResponse(id=request.id, model_name=request.model_name)
                await answers.put(pb.ModelStreamInferResponse(error_message=failed.error.message, infer_response=echo))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # the client's half closed cleanly, or its error surfaces here
        finally:  # the client went away: what it asked for is abandoned, not finished
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _observed(
        self, method: str, request: Any, metadata: dict[str, str], remaining_s: float | None
    ) -> tuple[Any, Served]:
        """One infer request, traced and recorded like an HTTP one (the same span and the
        same tags, from :mod:`image_router.telemetry`); a gateway error comes out as
        :class:`_Failed`, anything unexpected as ``internal_error``."""
        started = time.perf_counter()
        served: Served | None = None
        error: RouterError | None = None
        status = 200
        opened = None
        if self.tracer is not None:
            carrier = {k: v for k, v in metadata.items() if k in _TRACE_KEYS}
            opened = start_server_span(self.tracer, f"grpc {method}", carrier, {"rpc.system": "grpc"})
        try:
            response, served = await self._infer(request, metadata, remaining_s)
            return response, served
        except RouterError as exc:
            status, error = exc.status, exc
            raise _Failed(exc) from None
        except asyncio.CancelledError:
            status = 499  # the client cancelled, or went away
            raise
        except Exception:
            status = 500
            log.exception("unhandled error in %s", method)
            raise _Failed(RouterError("internal error")) from None
        finally:
            tags = outcome_tags(served, error)
            if opened is not None:
                end_server_span(opened, status, tags, {"rpc.status": status})
            if self.recorder.on:
                fields = {"request_id": request.id or "", "method": "POST", "path": _SERVICE + method}
                self.recorder.finish("grpc", status, tags, time.perf_counter() - started, fields)

    async def _infer(self, request: Any, metadata: dict[str, str], remaining_s: float | None) -> tuple[Any, Served]:
        started = time.monotonic()
        for spec in request.outputs:
            if spec.name != "IMAGE":
                raise InvalidRequest("the only output is IMAGE", field="outputs")
        image_req = image_request(decode_inputs(request))
        options = infer_options(parameters_of(request.parameters))
        budget_s = options.budget_s
        if remaining_s is not None:
            left = max(0.0, remaining_s - DEADLINE_MARGIN_S)
            budget_s = left if budget_s is None else min(budget_s, left)
        alias = request.model_name
        facts = RequestFacts.of(image_req.prompts[0], options.intent, alias, metadata)
        tenant = self.gateway.authenticate(metadata.get("authorization"))
        options = dataclasses.replace(options, budget_s=budget_s)
        ask = Ask.of(facts, image_req, started, tenant, options)  # the one place gRPC's metadata becomes the value
        served = await self.gateway.serve(ask)
        images = await served.result.pixels()
        response = encode_image_response(alias, served.version, request.id, images, served_parameters(served))
        return response, served
