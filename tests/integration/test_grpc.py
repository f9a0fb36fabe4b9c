"""The KServe v2 gRPC front door, with unmodified ``tritonclient.grpc`` clients.

The gateway is ``router serve`` (HTTP and gRPC in one process) in front of the
session's real Triton; every client here is the one Triton users already have.
"""

from __future__ import annotations

import asyncio
import io
import queue
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.integration.routes_common import ROUTING
from tests.procs import GatewayProcess, scrape

Start = Callable[..., GatewayProcess]


@pytest.fixture()
def gw(start_gateway: Start) -> GatewayProcess:
    return start_gateway(ROUTING)


def _inputs(prompt: str, seed: int = 7, **sizes: int) -> list[grpcclient.InferInput]:
    p = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
    s = grpcclient.InferInput("SEED", [1, 1], "INT64")
    s.set_data_from_numpy(np.array([[seed]], dtype=np.int64))
    out = [p, s]
    for name, value in sizes.items():
        t = grpcclient.InferInput(name.upper(), [1, 1], "INT64")
        t.set_data_from_numpy(np.array([[value]], dtype=np.int64))
        out.append(t)
    return out


def _served(result: Any) -> dict[str, str]:
    return {k: v.string_param for k, v in result.get_response().parameters.items()}


def test_a_tritonclient_grpc_client_works_unchanged(gw: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("draft") and client.is_model_ready("auto")
    assert client.get_server_metadata().name == "image-router"
    meta = client.get_model_metadata("auto")
    assert meta.name == "auto" and {t.name for t in meta.inputs} >= {"PROMPT"}
    config = client.get_model_config("draft").config
    assert config.name == "draft" and config.backend == "python" and config.max_batch_size > 0
    assert {m.name for m in client.get_model_repository_index().models} >= {"draft", "quality", "sketch"}
    stats = client.get_inference_statistics("draft").model_stats
    assert stats and all(s.name == "draft" for s in stats)

    result = client.infer("draft", _inputs("a red fox in the snow"), request_id="r-1")
    image = result.as_numpy("IMAGE")
    assert image is not None and image.dtype == np.uint8 and image.shape[0] == 1 and image.shape[-1] == 3
    assert result.get_response().id == "r-1"
    assert _served(result)["router_model"] == "draft" and _served(result)["router_route"]
    # the same image as over HTTP: one data plane (the prompt, seed and size read alike)
    http = httpx.post(
        gw.url + "/api/v1/generate", json={"prompt": "a red fox in the snow", "seed": 7, "model": "draft"}, timeout=30
    )
    assert http.status_code == 200 and http.headers["content-type"] == "image/png"
    assert http.headers["x-router-seed"] == "7"
    over_http = np.asarray(Image.open(io.BytesIO(http.content)).convert("RGB"))
    assert over_http.shape == image.shape[1:] and np.array_equal(over_http, image[0])
    other_seed = client.infer("draft", _inputs("a red fox in the snow", seed=8)).as_numpy("IMAGE")
    assert other_seed is not None and not np.array_equal(other_seed[0], over_http)  # the seed is what decides
    client.close()


def test_metadata_reaches_the_routing_rules_and_tags_come_back(gw: GatewayProcess) -> None:
    channel = grpc.insecure_channel(gw.grpc_target)
    stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="auto", id="m-1")
    prompt = request.inputs.add(name="PROMPT", datatype="BYTES", shape=[1, 1])
    prompt.contents.bytes_contents.append(b"plain words")  # typed contents, not raw
    response, call = stub.ModelInfer.with_call(request, metadata=(("x-beta", "yes"),), timeout=30)
    tags = dict(call.initial_metadata())
    assert tags["x-router-route"] == "beta" and tags["x-router-model"].startswith("noop")
    assert response.parameters["router_route"].string_param == "beta"
    assert response.outputs[0].name == "IMAGE" and len(response.raw_output_contents) == 1
    # intent as metadata too
    _, call = stub.ModelInfer.with_call(request, metadata=(("x-intent", "canary"), ("x-user-id", "u1")), timeout=30)
    assert dict(call.initial_metadata())["x-router-route"] == "canary"
    channel.close()


def test_a_deadline_shorter_than_quality_is_answered_downgraded_within_it(gw: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    t0 = time.monotonic()
    result = client.infer("auto", _inputs("a castle at dusk"), client_timeout=1.2, parameters={"intent": "quality"})
    elapsed = time.monotonic() - t0
    served = _served(result)
    assert elapsed < 1.2, elapsed
    assert served["router_model"] in ("preview", "draft") and "quality:" in served["router_fallback"]
    client.close()


def test_the_timeout_and_priority_parameters_are_honoured(gw: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    t0 = time.monotonic()
    hq = {"intent": "quality"}  # route hq: quality, then preview, draft; 8 s budget
    result = client.infer("auto", _inputs("a castle at dawn"), timeout=1_000_000, priority=1, parameters=hq)  # µs
    assert time.monotonic() - t0 < 1.3
    served = _served(result)
    assert served["router_model"] in ("preview", "draft")
    assert served["router_priority"] == "1", served  # admitted at the level it asked for
    plain = _served(client.infer("auto", _inputs("a castle at dawn"), timeout=1_000_000, parameters=hq))
    assert "router_priority" not in plain or plain["router_priority"] != "1", plain
    with pytest.raises(InferenceServerException) as info:  # a budget no tier can meet, on an idle gateway
        client.infer("auto", _inputs("a castle at noon"), timeout=1_000, parameters={"intent": "impossible"})
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED", info.value  # 504, not a 429: nothing was queued
    client.close()


def test_errors_map_to_grpc_status_codes_and_the_gateway_keeps_serving(gw: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_target)

    def status_of(call: Callable[[], Any]) -> str:
        with pytest.raises(InferenceServerException) as info:
            call()
        return str(info.value.status())

    assert status_of(lambda: client.infer("no-such-model", _inputs("x"))) == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("PROMPT", [1], "INT64")
    wrong.set_data_from_numpy(np.array([5], dtype=np.int64))
    assert status_of(lambda: client.infer("draft", [wrong])) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: client.infer("draft", _inputs(""))) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: client.get_model_metadata("nope")) == "StatusCode.NOT_FOUND"
    big = grpcclient.InferInput("PROMPT", [1], "BYTES")
    big.set_data_from_numpy(np.array([b"x" * (5 << 20)], dtype=object))  # over the 4 MiB message limit
    assert status_of(lambda: client.infer("draft", [big])) == "StatusCode.RESOURCE_EXHAUSTED"

    channel = grpc.insecure_channel(gw.grpc_target)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # no serializer: bytes as they are
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
        with pytest.raises(grpc.RpcError) as err:
            raw(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in (err.value.details() or "")
    # shapes that lie about their data, in raw and typed form
    stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
    lying = pb.ModelInferRequest(model_name="draft")
    lying.inputs.add(name="PROMPT", datatype="BYTES", shape=[3])
    lying.raw_input_contents.append(b"\x05\x00\x00\x00hello")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(lying, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "PROMPT" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:  # the stable code rides in the trailing metadata
        unknown = pb.ModelInferRequest(model_name="nope")
        unknown.inputs.add(name="PROMPT", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
        stub.ModelInfer(unknown, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(err.value.trailing_metadata() or ())["x-router-error-code"] == "model_not_found"
    channel.close()

    assert client.is_server_live()
    assert client.infer("draft", _inputs("still here")).as_numpy("IMAGE") is not None
    client.close()


def test_streaming_answers_each_request_with_its_id_and_errors_stay_on_their_request(gw: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(4):
        client.async_stream_infer("draft", _inputs(f"stream {i}", seed=i), request_id=f"s-{i}")
    wrong = grpcclient.InferInput("PROMPT", [1], "INT64")
    wrong.set_data_from_numpy(np.array([1], dtype=np.int64))
    client.async_stream_infer("draft", [wrong], request_id="bad")
    got: dict[str, Any] = {}
    errors = []
    for _ in range(5):
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(error)
        else:
            got[result.get_response().id] = result.as_numpy("IMAGE")
    client.stop_stream()
    client.close()
    assert sorted(got) == [f"s-{i}" for i in range(4)]
    assert all(image is not None and image.shape[0] == 1 for image in got.values())
    assert len(errors) == 1 and "PROMPT" in str(errors[0])


def test_the_aio_client_in_parallel_and_metrics_count_grpc(gw: GatewayProcess) -> None:
    async def run() -> list[str]:
        client = aiogrpc.InferenceServerClient(gw.grpc_target)
        try:
            results = await asyncio.gather(*(client.infer("draft", _inputs(f"parallel {i}", seed=i)) for i in range(6)))
            return [_served(r)["router_model"] for r in results]
        finally:
            await client.close()

    assert asyncio.run(run()) == ["draft"] * 6
    series = scrape(gw)
    grpc_ok = sum(
        v for (name, labels), v in series.items() if name == "router_requests_total" and ("api", "grpc") in labels
    )
    assert grpc_ok >= 6


def test_grpc_health_checking_for_kubernetes_probes(gw: GatewayProcess) -> None:
    channel = grpc.insecure_channel(gw.grpc_target)
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.2)
    assert status == health_pb2.HealthCheckResponse.SERVING
    named = stub.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5)
    assert named.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_too_many_streams_get_a_status_and_the_gateway_keeps_serving(start_gateway: Start) -> None:
    gw = start_gateway(ROUTING, extra=["--grpc-max-rpcs", "4"])

    async def run() -> tuple[int, int]:
        channels = [grpc.aio.insecure_channel(gw.grpc_target) for _ in range(10)]
        calls = []
        for channel in channels:  # streams that stay open, sending nothing
            stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls.append(stub.ModelStreamInfer())
        refused = held = 0
        for call in calls:
            try:
                await asyncio.wait_for(call.read(), 1.0)
            except TimeoutError:
                held += 1  # accepted and waiting for requests
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused += 1
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
        return held, refused

    held, refused = asyncio.run(run())
    assert held <= 4 and refused >= 6, (held, refused)
    time.sleep(0.5)
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    assert client.infer("draft", _inputs("after the flood")).as_numpy("IMAGE") is not None
    client.close()
