"""A Triton server over KServe v2 HTTP.

Health, readiness and metadata go through ``tritonclient.http.aio`` (the sync client
is not thread-safe). Inference, the hot path, sends binary tensors (images as JSON are
~3.6x larger) over :mod:`image_router.backends._http1` and reads the answer with
:func:`image_router.kserve.decode_response` (``tritonclient``'s ``InferResult`` defines two
classes per answer, ~20 µs of CPU per request). The remaining
time is sent as Triton's per-request ``timeout`` (µs) so work still queued when the
gateway has given up is dropped by Triton instead of computed for nobody; the
gateway enforces its own deadline around the call, because Triton cannot stop a
request that is already executing.

Over 400 lines: the per-call bookkeeping (lane, circuits, replica hedging, wasted
compute) must see the same call from send to answer; the wire codecs and the replica
set already live apart (``_http1``, ``_grpc``, ``replicas``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import numpy as np
import orjson
import tritonclient.http.aio as aioclient
from numpy.typing import NDArray
from opentelemetry import propagate, trace
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_random_exponential
from tritonclient.utils import InferenceServerException

from image_router.backends._grpc import (
    GrpcChannel,
    decode_compute,
    decode_image,
    infer_message,
    is_unreachable,
    map_grpc_error,
)
from image_router.backends._http1 import Http1Response, StaleConnection
from image_router.backends.base import ImageRequest, ImageResult, request_units
from image_router.backends.replicas import Replica, ReplicaSet
from image_router.config.table import Backend, Model
from image_router.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from image_router.kserve import decode_response, encode_request
from image_router.policy import hedge
from image_router.policy.forecast import Forecast
from image_router.policy.retry_budget import RetryBudget

__all__ = ["WASTE_REASONS", "TritonBackend", "compute_ns", "given_up_because", "map_triton_error"]


def map_triton_error(exc: BaseException) -> BackendError:
    """Translate a tritonclient/transport failure into the gateway's error tree.

    Marked retryable: what cannot have been processed — a refused connection, one
    closed before any byte of an answer, and Triton's ``503`` for a full queue or an
    unavailable model. A timeout is never retried: the time is gone.
    """
    mapped: BackendError
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = exc.message() or str(exc)
        lowered = message.lower()
        if status == "400":
            return BackendRejected(message)
        if status in ("503", "502", "500") and "timeout" in lowered:
            return BackendTimeout(message)
        if status in ("503", "502", "429", "404"):
            mapped = BackendUnavailable(message, upstream_status=int(status))
            mapped.retryable = status == "503" and ("queue" in lowered or "unavailable" in lowered)
            return mapped
        return BackendError(message, upstream_status=status or None)
    if isinstance(exc, ConnectionRefusedError | StaleConnection):
        mapped = BackendUnavailable(f"connection failed: {type(exc).__name__}: {exc}")
        mapped.retryable = True
        return mapped
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError | OSError):
        return BackendUnavailable(f"connection failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return BackendError(f"transport error: {exc}")
    return BackendError(f"{type(exc).__name__}: {exc}")


def _inputs(request: ImageRequest) -> list[tuple[str, str, NDArray[Any]]]:
    batch = len(request.prompts)
    inputs: list[tuple[str, str, NDArray[Any]]] = [
        ("PROMPT", "BYTES", np.array([p.encode() for p in request.prompts], dtype=np.object_).reshape(batch, 1))
    ]
    if request.seeds is not None:
        inputs.append(("SEED", "INT64", np.array(request.seeds, dtype="<i8").reshape(batch, 1)))
    for name, value in (("STEPS", request.steps), ("WIDTH", request.width), ("HEIGHT", request.height)):
        if value is not None:
            inputs.append((name, "INT32", np.full((batch, 1), value, dtype="<i4")))
    if request.init_image is not None:  # one picture for every prompt of the batch
        inputs.append(("INIT_IMAGE", "UINT8", np.repeat(request.init_image[None], batch, axis=0)))
        if request.mask is not None:
            inputs.append(("MASK", "UINT8", np.repeat(request.mask[None], batch, axis=0)))
        if request.strength is not None:
            inputs.append(("STRENGTH", "FP32", np.full((batch, 1), request.strength, dtype="<f4")))
    return inputs


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body[:200].decode("utf-8", "replace")


class _Unreachable(Exception):
    """The replica could not be reached: its mapped error, and why, for taking it out."""

    def __init__(self, error: BackendError, why: str) -> None:
        self.error = error
        self.why = why


def _quiet(task: asyncio.Future[ImageResult]) -> None:
    """A cancelled hedge's outcome, taken so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


# why a call was given up (router_compute_wasted_seconds_total{reason}); whoever cancels
# a call may say so (``task.cancel("hedge")``: the loser of a hedged pair)
WASTE_REASONS = frozenset({"hedge", "timeout", "abandoned", "cancelled"})


def _said(cancelled: asyncio.CancelledError) -> str | None:
    """The reason a cancellation carries, when it is one of :data:`WASTE_REASONS`."""
    said = cancelled.args[0] if cancelled.args else None
    return said if isinstance(said, str) and said in WASTE_REASONS else None


def given_up_because(cancelled: asyncio.CancelledError, ran_s: float, timeout_s: float) -> str:
    """Why a call was given up: the reason its cancellation carries, else ``timeout``
    when it ran out its time (the same rule that counts it against the replica), else
    ``abandoned`` (the client left, or a job was stopped)."""
    return _said(cancelled) or ("timeout" if ran_s >= 0.9 * timeout_s else "abandoned")


class TritonBackend:
    """One Triton backend (one or several replicas), shared by all requests."""

    def __init__(self, spec: Backend, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.replicas = ReplicaSet(spec, clock)
        policy = spec.retry
        self._budget = RetryBudget(policy.budget_ratio, policy.budget_window_s)
        self._control: dict[str, aioclient.InferenceServerClient] = {}
        self.retries = 0
        self.hedges = 0  # calls sent to a second replica because the first was overdue

    def busy(self) -> bool:
        """No replica in service is idle: each has something ahead on some model
        (executing, queued, or abandoned but still computing) — its devices are at work.
        With several replicas, one idle replica is room for background work (it is the
        one :meth:`ReplicaSet.choose` picks: nothing ahead there)."""
        now = self.clock()
        return not any(
            all(lane.ahead(now) == 0 for lane in r.lanes.values()) for r in self.replicas.replicas if r.healthy
        )

    def _client(self) -> aioclient.InferenceServerClient:
        """A ``tritonclient`` for metadata and readiness, on the first replica in service;
        made on first use, because aiohttp's connector must be made inside the loop."""
        replica = next((r for r in self.replicas.replicas if r.healthy), self.replicas.replicas[0])
        client = self._control.get(replica.url)
        if client is None:
            client = self._control[replica.url] = aioclient.InferenceServerClient(
                replica.url.split("://", 1)[1],
                conn_limit=8,
                # tritonclient turns this into aiohttp's *total* timeout; control calls
                # are short, and inference does not go through this client.
                conn_timeout=10.0,
                ssl=replica.url.startswith("https://"),
            )
        return client

    def _retry_while(self, attempts: int) -> Callable[[RetryCallState], bool]:
        """tenacity asks ``retry`` before ``stop``: ask the budget only while an attempt
        is left, or every request's last failure spends budget on a retry never sent."""

        def decide(state: RetryCallState) -> bool:
            failure = state.outcome.exception() if state.outcome is not None else None
            return state.attempt_number < attempts and failure is not None and self._should_retry(failure)

        return decide

    def _should_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, BackendError) and exc.retryable and self._budget.try_spend(self.clock()):
            self.retries += 1
            return True
        return False

    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        """Infer on the least-loaded replica; retry what is safe to retry on another one,
        with jittered backoff, within ``timeout_s`` and the retry budget."""
        self.replicas.start()
        deadline = self.clock() + timeout_s
        self._budget.record_request(self.clock())
        tried: set[Replica] = set()
        try:  # the common case, kept off tenacity's per-call bookkeeping (CPU is the budget here)
            return await self._once(model, request, deadline, priority, tried)
        except BackendError as exc:
            if not self.spec.retry.attempts or not self._should_retry(exc):
                raise
        policy = self.spec.retry
        await asyncio.sleep(random.uniform(0, policy.backoff_s))  # jitter before the first retry too
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_random_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s),
            retry=self._retry_while(policy.attempts),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(model, request, deadline, priority, tried)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _once(
        self, model: Model, request: ImageRequest, deadline: float, priority: int | None, tried: set[Replica]
    ) -> ImageResult:
        """One try on the best replica not tried yet (or the best of all, if all were);
        hedged on another replica when the answer is overdue (:meth:`_hedged`)."""
        replica = self.replicas.choose(model, tried) or self.replicas.choose(model, set())
        if replica is None:
            raise BackendUnavailable(f"no replica of backend {self.spec.name!r} can take {model.name!r}")
        tried.add(replica)
        if len(self.replicas.replicas) < 2:
            return await self._infer(replica, model, request, deadline - self.clock(), priority)
        return await self._hedged(replica, model, request, deadline, priority, tried)

    async def _hedged(
        self,
        replica: Replica,
        model: Model,
        request: ImageRequest,
        deadline: float,
        priority: int | None,
        tried: set[Replica],
    ) -> ImageResult:
        """The call on ``replica``, and the same call on another replica once the first is
        overdue and the other can still answer in time (:mod:`image_router.policy.hedge`):
        whichever answers first wins and the other is cancelled. Hedges spend the retry
        budget, so a slow spell cannot double the load. A first call the hedge beat
        counts against its replica's model circuit (a frozen replica stops being chosen
        first); a hedge that loses counts against nobody. The loser is cancelled saying
        ``"hedge"``: its time is wasted compute (``Replica.wasted_s``), never billed."""
        now = self.clock()
        first = asyncio.ensure_future(self._infer(replica, model, request, deadline - now, priority))
        calls = [first]
        units = request_units(model, request)
        why: str | None = "hedge"  # a call left running when the pair ends lost the race
        try:
            wait_s = min(hedge.overdue_after(replica.lane(model).forecast(now, 0, units)), max(0.0, deadline - now))
            done, _ = await asyncio.wait(calls, timeout=wait_s)
            if done:
                return first.result()
            other = self.replicas.choose(model, tried)
            now = self.clock()
            if (
                other is None
                or not hedge.worth_hedging(other.lane(model).forecast(now, 0, units), deadline - now)
                or not self._budget.try_spend(now)
            ):
                return await first
            tried.add(other)
            self.hedges += 1
            second = self._infer(other, model, request, deadline - now, priority, counted=False)
            calls.append(asyncio.ensure_future(second))
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            won = next((c for c in calls if c.done() and not c.cancelled() and c.exception() is None), None)
            if won is None:  # one failed: the other may still answer
                await asyncio.wait(calls)
                won = next((c for c in calls if not c.cancelled() and c.exception() is None), None)
            if won is None:  # both failed: the first call's error (a fixed rule decides the retry)
                error = first.exception() or calls[1].exception()
                assert error is not None
                raise error
            if won is not first and not first.done():  # beaten while still waiting: overdue there
                replica.model_breaker(model.name).record(self.clock(), False)
            return won.result()
        except asyncio.CancelledError as exc:  # the pair itself given up: its calls for the same reason
            why = _said(exc)
            raise
        finally:
            for call in calls:
                if not call.done():
                    call.cancel(why)  # over gRPC the loser stops in Triton too
                call.add_done_callback(_quiet)

    async def _infer(
        self,
        replica: Replica,
        model: Model,
        request: ImageRequest,
        timeout_s: float,
        priority: int | None,
        counted: bool = True,
    ) -> ImageResult:
        """One call on ``replica`` (over its protocol), with the replica's bookkeeping:
        its lane, circuits and health (``counted``: a cancellation near its timeout counts
        against the replica; not for a hedge, cancelled because the other call won)."""
        replica.outstanding += 1
        lane = replica.lane(model)
        channel = None if model.over_http else replica.grpc  # gRPC unless the model says http
        t0 = self.clock()
        ticket = lane.send(t0, request_units(model, request), min(len(request.prompts), request.rows_per_pass))
        try:
            if channel is not None:
                result = await self._call_grpc(channel, model, request, timeout_s, priority)
            else:
                result = await self._call_http(replica, model, request, timeout_s, priority)
        except _Unreachable as exc:
            lane.done(ticket, self.clock(), ok=False)
            replica.failed += 1
            replica.breaker.record(self.clock(), False)
            self.replicas.mark_down(replica, exc.why)
            raise exc.error from exc.__cause__
        except asyncio.CancelledError as cancelled:
            now = self.clock()
            # wasted: the time it (by the lane's account) executed, not what it queued — a
            # call cancelled while still queued behind others cost Triton nothing
            began = ticket.started if ticket.started is not None and ticket.started <= now else None
            replica.gave_up(model.name, given_up_because(cancelled, now - t0, timeout_s), now - (began or now))
            if channel is not None:  # cancelled in Triton too: it stops
                lane.cancel(ticket, self.clock())
            else:  # HTTP: Triton computes it anyway
                lane.abandon(ticket, self.clock())
            if counted and self.clock() - t0 >= 0.9 * timeout_s:  # ran out its time here: count it
                replica.failed += 1
                replica.model_breaker(model.name).record(self.clock(), False)
            raise
        except BackendError as failure:  # Triton answered, with an error
            if isinstance(failure, BackendTimeout):  # timed out in Triton's queue: what is
                lane.abandon(ticket, self.clock())  # ahead of it runs on, as if we gave up
            else:
                lane.done(ticket, self.clock(), ok=False)
            counts_against = not isinstance(failure, BackendRejected) and not failure.retryable
            replica.model_breaker(model.name).record(self.clock(), not counts_against)
            raise
        except Exception:  # a fault of ours (encoding, a channel a reload closed): never a ticket left behind
            lane.done(ticket, self.clock(), ok=False)
            raise
        finally:
            replica.outstanding -= 1
        lane.done(ticket, self.clock(), ok=True)
        replica.served += 1
        spent = result.compute_ns
        replica.took(model.name, sum(spent) if spent is not None else round((self.clock() - t0) * 1e9))
        replica.breaker.record(self.clock(), True)
        replica.model_breaker(model.name).record(self.clock(), True)
        return result

    async def _call_http(
        self, replica: Replica, model: Model, request: ImageRequest, timeout_s: float, priority: int | None
    ) -> ImageResult:
        # No output named and every output binary: Triton then sends all the model's outputs,
        # so COMPUTE_NS comes from a model that has it and no model errors for lacking it.
        parameters: dict[str, Any] = {"timeout": max(1, int(timeout_s * 1_000_000)), "binary_data_output": True}
        if priority:
            parameters["priority"] = priority
        if request.rows_per_pass > 1:
            parameters["rows_per_pass"] = request.rows_per_pass
        body, header_length = encode_request(_inputs(request), parameters, [])
        path = f"/v2/models/{quote(model.remote_name, safe='')}"
        if model.version:
            path += f"/versions/{model.version}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
        if trace.get_current_span().get_span_context().is_valid:  # tracing on: W3C traceparent
            propagate.inject(headers)
        try:
            response = await replica.pool.request(path + "/infer", body, headers)
        except OSError as exc:
            raise _Unreachable(map_triton_error(exc), f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise map_triton_error(InferenceServerException(_error_message(response.body), status=str(response.status)))
        return _result(model, response)

    async def _call_grpc(
        self, channel: GrpcChannel, model: Model, request: ImageRequest, timeout_s: float, priority: int | None
    ) -> ImageResult:
        """Over gRPC: when the awaiting task is cancelled (the budget's timeout, a hedge's
        loser, the client gone), grpc.aio cancels the call and Triton drops the work."""
        message = infer_message(
            model.remote_name, model.version or "", _inputs(request), timeout_s, priority, request.rows_per_pass
        )
        metadata: dict[str, str] = {}
        if trace.get_current_span().get_span_context().is_valid:
            propagate.inject(metadata)
        try:
            response = await channel.infer(message, timeout_s, list(metadata.items()))
        except grpc.aio.AioRpcError as exc:
            if is_unreachable(exc):
                raise _Unreachable(map_grpc_error(exc), f"gRPC {exc.code().name}: {exc.details()}") from exc
            raise map_grpc_error(exc) from exc
        try:
            images, version = decode_image(response)
            spent = decode_compute(response)
        except ValueError as exc:
            raise BackendError(f"{model.remote_name} sent an answer that is not KServe v2: {exc}") from exc
        if images.ndim != 4:
            raise BackendError(f"{model.remote_name} returned no valid IMAGE tensor")
        return ImageResult(images, version or model.version or "", compute_ns=spent)

    async def ready(self) -> bool:
        self.replicas.start()
        try:
            return bool(await self._client().is_server_ready())
        except Exception:  # noqa: BLE001 - unreachable means not ready
            return False

    async def model_ready(self, model: Model) -> bool:
        try:
            return bool(await self._client().is_model_ready(model.remote_name, model.version or ""))
        except Exception:  # noqa: BLE001
            return False

    async def _about(self, method: str, model: Model) -> dict[str, Any]:
        """One of tritonclient's per-model control calls, its failures mapped."""
        try:
            answer = await getattr(self._client(), method)(model.remote_name, model.version or "")
        except Exception as exc:
            raise map_triton_error(exc) from exc
        return dict(answer)

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        return await self._about("get_model_metadata", model)

    async def model_config(self, model: Model) -> dict[str, Any]:
        return await self._about("get_model_config", model)

    async def model_statistics(self, model: Model) -> dict[str, Any]:
        return await self._about("get_inference_statistics", model)

    async def replica_statistics(self, timeout_s: float = 5.0) -> list[tuple[Replica, dict[str, Any] | None]]:
        """Each replica with Triton's ``GET /v2/models/stats`` there (every model; ``None``:
        no answer within ``timeout_s``), asked at once: what the gateway's own accounts on
        each :class:`Replica` are reconciled with (:mod:`image_router.billing.reconcile`)."""
        replicas = list(self.replicas.replicas)
        answers = await asyncio.gather(*(_statistics(r, timeout_s) for r in replicas))
        return list(zip(replicas, answers, strict=True))

    def available(self, model: Model) -> bool:
        return self.replicas.available(model.name)

    def forecast(self, model: Model, extra_ahead: int = 0, units: float = 1.0) -> Forecast | None:
        return self.replicas.forecast(model, extra_ahead, units)

    def snapshot(self) -> list[dict[str, Any]]:
        return self.replicas.snapshot()

    async def aclose(self) -> None:
        await self.replicas.aclose()
        for client in self._control.values():
            await client.close()
        self._control.clear()


async def _statistics(replica: Replica, timeout_s: float) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(timeout_s):
            response = await replica.pool.request("/v2/models/stats", b"", {}, method="GET")
        answer = orjson.loads(response.body) if response.status == 200 else None
    except (OSError, TimeoutError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _result(model: Model, response: Http1Response) -> ImageResult:
    try:
        length = response.headers.get("inference-header-content-length")
        header_length = int(length) if length else None
        body = response.body
        header = orjson.loads(body if header_length is None else body[:header_length])  # once, for both outputs
        images, version = decode_response(body, header_length, "IMAGE", header)
        spent = compute_ns(body, header_length, header)
    except ValueError as exc:  # orjson's errors are ValueErrors too
        raise BackendError(f"{model.remote_name} sent an answer that is not KServe v2: {exc}") from exc
    if images.ndim != 4:
        raise BackendError(f"{model.remote_name} returned no valid IMAGE tensor")
    return ImageResult(images, version or model.version or "", compute_ns=spent)


def compute_ns(body: bytes, header_length: int | None, header: Any = None) -> tuple[int, ...] | None:
    """The ``COMPUTE_NS`` output of a KServe v2 answer (binary or JSON), one value per
    image; ``None`` when the model does not send it. ``ValueError`` when it is malformed.
    ``header``: the answer's JSON header, when the caller has parsed it already."""
    head = body if header_length is None else body[:header_length]
    if header is None:
        header = orjson.loads(head)
    offset = len(head)
    for spec in header.get("outputs", []) if isinstance(header, dict) else []:
        size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or spec.get("name") != "COMPUTE_NS":
            offset += size if isinstance(size, int) else 0
            continue
        if spec.get("datatype") != "INT64":
            raise ValueError(f"COMPUTE_NS is {spec.get('datatype')}, not INT64")
        if size is None:
            values = np.asarray(spec.get("data", []), dtype=np.int64).reshape(-1)
        elif not isinstance(size, int) or size % 8 or offset + size > len(body):
            raise ValueError("COMPUTE_NS: binary_data_size does not fit the body")
        else:
            values = np.frombuffer(body, dtype="<i8", count=size // 8, offset=offset)
        return tuple(values.tolist())  # Python ints, in one call (not one int() per value)
    return None
