"""Inference calls to Triton over gRPC (a backend's ``protocol: grpc``).

Why: over HTTP/1.1 the only way to give up on a request is to drop the connection, and
Triton then computes the answer anyway; a burst's abandoned quality work keeps the model
busy while live requests wait. A cancelled gRPC call (``grpc.aio`` cancels it when the
awaiting task is cancelled, or its deadline passes) resets its HTTP/2 stream, Triton
marks the request cancelled — dropped if still queued — and the models check between
denoising steps (:mod:`image_router.pipelines.triton_model`). Measured: a quality request
abandoned after 0.3 s used 0.37 s of model CPU over gRPC, 2.74 s (all of it) over HTTP.

One channel per replica (HTTP/2 multiplexes every call on it), made on first use inside
the running loop.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from image_router.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from image_router.kserve import raw_tensor

__all__ = ["GrpcChannel", "decode_compute", "decode_image", "infer_message", "is_unreachable", "map_grpc_error"]

_OPTIONS = [
    ("grpc.max_receive_message_length", 512 << 20),  # images: up to 16 x 1024 x 1024 x 3 and more
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 30_000),  # notice a dead peer on an idle channel
    ("grpc.keepalive_timeout_ms", 10_000),
]
_CONNECTION = (
    "failed to connect",
    "connection refused",
    "socket closed",
    "connection reset",
    "unreachable",
    "broken pipe",
)


class GrpcChannel:
    def __init__(self, target: str) -> None:
        self.target = target
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def stub(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=_OPTIONS)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def infer(self, message: Any, timeout_s: float, metadata: list[tuple[str, str]]) -> Any:
        return await self.stub().ModelInfer(message, timeout=timeout_s, metadata=metadata or None)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


def infer_message(
    model_name: str,
    version: str,
    inputs: list[tuple[str, str, NDArray[Any]]],
    timeout_s: float,
    priority: int | None,
    rows_per_pass: int = 1,
) -> Any:
    """A ``ModelInferRequest`` with every input as raw contents and Triton's ``timeout``
    (µs: work still queued when it passes is dropped) and ``priority``; ``rows_per_pass``
    (the model's custom parameter) only when rows are to share passes."""
    message = pb.ModelInferRequest(model_name=model_name, model_version=version)
    message.parameters["timeout"].int64_param = max(1, int(timeout_s * 1_000_000))
    if priority:
        message.parameters["priority"].uint64_param = priority
    if rows_per_pass > 1:
        message.parameters["rows_per_pass"].int64_param = rows_per_pass
    for name, datatype, array in inputs:
        message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        message.raw_input_contents.append(raw_tensor(datatype, array))
    # no output named: Triton sends every output the model has, so COMPUTE_NS comes
    # from a model that reports it and a model without it answers as before
    return message


def decode_image(response: Any) -> tuple[NDArray[Any], str]:
    """The IMAGE tensor and the model version; ``ValueError`` on a malformed answer."""
    for i, output in enumerate(response.outputs):
        if output.name != "IMAGE":
            continue
        if output.datatype != "UINT8" or i >= len(response.raw_output_contents):
            raise ValueError(f"IMAGE is {output.datatype} without raw contents")
        shape = [int(d) for d in output.shape]
        array = np.frombuffer(response.raw_output_contents[i], dtype=np.uint8)
        if array.size != int(np.prod(shape)):
            raise ValueError(f"IMAGE: {array.size} values do not fit shape {shape}")
        return array.reshape(shape), response.model_version
    raise ValueError("no IMAGE output")


def decode_compute(response: Any) -> tuple[int, ...] | None:
    """The ``COMPUTE_NS`` output (nanoseconds per image in the model), ``None`` when the
    model does not send it; ``ValueError`` when it is malformed."""
    for i, output in enumerate(response.outputs):
        if output.name != "COMPUTE_NS":
            continue
        if output.datatype != "INT64" or i >= len(response.raw_output_contents):
            raise ValueError(f"COMPUTE_NS is {output.datatype} without raw contents")
        raw = response.raw_output_contents[i]
        if len(raw) % 8:
            raise ValueError("COMPUTE_NS: not a whole number of INT64 values")
        return tuple(int(v) for v in np.frombuffer(raw, dtype="<i8"))
    return None


def is_unreachable(exc: grpc.aio.AioRpcError) -> bool:
    """The replica could not be reached (not Triton refusing): take it out of service."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _CONNECTION)


def map_grpc_error(exc: grpc.aio.AioRpcError) -> BackendError:
    """The gateway's error for a failed call, as :func:`map_triton_error` maps HTTP ones:
    what cannot have been processed (no connection, a full queue) is retryable."""
    code, message = exc.code(), exc.details() or str(exc.code())
    lowered = message.lower()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BackendRejected(message)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "timeout" in lowered:
        return BackendTimeout(message)
    mapped: BackendError
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND):
        mapped = BackendUnavailable(message, upstream_status=code.name)
        mapped.retryable = is_unreachable(exc) or "queue" in lowered
        return mapped
    return BackendError(message, upstream_status=code.name)
