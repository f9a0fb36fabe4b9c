"""README's gRPC promises no other test reads: metadata plays the part of headers
(``x-canary``, ``x-priority``, ``cache-control``), and a tenant's 403 and 429 come as
``PERMISSION_DENIED`` and ``RESOURCE_EXHAUSTED`` with the stable code, the retry delay
(``grpc-retry-pushback-ms``, ``retry-after``) and the ``x-ratelimit-*`` trailers."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

ACME = "sk-acme-0123456789abcdef"  # may use cheap, ab and cached; 1 request/s, a burst of 2
BETA = "sk-beta-0123456789abcdef"  # may steer with X-Canary and X-Priority


def routes(cache_dir: Path) -> str:
    return (
        TIERS
        + f"""
cache: {{store: "disk://{cache_dir}"}}
tenants:
  mode: keys
  tenants:
    acme: {{keys: ["{ACME}"], requests_per_s: 1, burst: 2, routes: [cheap, ab, cached]}}
    beta: {{keys: ["{BETA}"], overrides: [X-Canary, X-Priority]}}
routes:
  - name: cheap
    match: {{intent: cheap}}
    model: noop
  - name: ab
    match: {{intent: ab}}
    split:
      - {{model: noop, weight: 100}}
      - {{model: noop-canary, weight: 0, canary: true}}
  - name: cached
    match: {{intent: cached}}
    model: noop
    cache: {{}}
  - name: other
    match: {{intent: other}}
    model: noop
default_route: {{name: main, model: noop, budget_ms: 5000}}
"""
    )


@pytest.fixture()
def stub(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> service_pb2_grpc.GRPCInferenceServiceStub:
    gw = start_gateway(routes(tmp_path / "cache"))
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gw.grpc_target))


def request(intent: str, prompt: str = "a lamp", seed: int = 3) -> pb.ModelInferRequest:
    """A request to ``auto`` with KServe's ``intent`` parameter (a routing fact of the
    request's own, not an ``x-intent`` override a tenant must be allowed to send)."""
    message = pb.ModelInferRequest(model_name="auto")
    message.parameters["intent"].string_param = intent
    message.inputs.add(name="PROMPT", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(prompt.encode())
    message.inputs.add(name="SEED", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(seed)
    return message


def infer(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, key: str, intent: str, *metadata: tuple[str, str], seed: int = 3
) -> tuple[dict[str, str], dict[str, str]]:
    """The answer's initial metadata (the X-Router-* tags) and its parameters."""
    headers = (("authorization", f"Bearer {key}"), *metadata)
    response, call = stub.ModelInfer.with_call(request(intent, seed=seed), metadata=headers, timeout=30)
    params = {k: v.string_param for k, v in response.parameters.items()}
    return dict(call.initial_metadata()), params


def test_x_canary_and_x_priority_metadata_steer_like_headers_for_a_tenant_allowed_to(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    tags, _ = infer(stub, BETA, "ab", ("x-canary", "always"))
    assert tags["x-router-canary"] == "true" and tags["x-router-model"].startswith("noop-canary"), tags
    tags, _ = infer(stub, BETA, "ab", ("x-canary", "never"))
    assert tags["x-router-canary"] == "false", tags
    tags, _ = infer(stub, ACME, "ab", ("x-canary", "always"))  # acme may not: ignored, not refused
    assert tags["x-router-canary"] == "false", tags
    _, params = infer(stub, BETA, "cheap", ("x-priority", "1"))
    assert params.get("router_priority") == "1", params


def test_cache_control_metadata_acts_as_the_header(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert infer(stub, BETA, "cached", seed=11)[0]["x-cache"] == "MISS"
    assert infer(stub, BETA, "cached", seed=11)[0]["x-cache"] == "HIT"
    assert infer(stub, BETA, "cached", ("cache-control", "no-cache"), seed=11)[0]["x-cache"] == "BYPASS"
    assert infer(stub, BETA, "cached", ("cache-control", "no-store"), seed=12)[0]["x-cache"] == "BYPASS"
    assert infer(stub, BETA, "cached", seed=12)[0]["x-cache"] == "MISS"  # no-store kept nothing


def test_a_route_a_tenant_may_not_use_is_permission_denied_with_its_code(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        infer(stub, ACME, "other")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
    assert dict(err.value.trailing_metadata() or ())["x-router-error-code"] == "forbidden"


def test_a_tenant_over_its_rate_is_resource_exhausted_with_pushback_and_ratelimit_trailers(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    refused = None
    for _ in range(4):  # a burst of 2, then 1 per second
        try:
            infer(stub, ACME, "cheap")
        except grpc.RpcError as exc:
            refused = exc
            break
    assert refused is not None, "four requests at once were all let through a 1/s limit"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused.trailing_metadata() or ())
    assert trailers["x-router-error-code"] == "rate_limited"
    assert int(trailers["retry-after"]) >= 1 and trailers["grpc-retry-pushback-ms"] == str(
        int(trailers["retry-after"]) * 1000
    )
    # the limit is the burst (as over HTTP: x-ratelimit-limit-requests is what a client may send at once)
    assert trailers["x-ratelimit-limit-requests"] == "2" and trailers["x-ratelimit-remaining-requests"] == "0"


def test_a_stream_answers_each_request_as_it_completes_not_in_order(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """README: ModelStreamInfer answers each request as it completes. A slow tier's
    request sent first does not hold back a fast one sent after it on the same stream."""
    gw = start_gateway(routes(tmp_path / "cache"))
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), headers={"authorization": f"Bearer {BETA}"}
    )
    for model, rid in (("preview", "slow"), ("noop", "fast")):
        prompt = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"a kite"]], dtype=object))
        client.async_stream_infer(model, [prompt], request_id=rid)
    order = []
    for _ in range(2):
        result, error = answers.get(timeout=60)
        assert error is None, error
        order.append(result.get_response().id)  # type: ignore[attr-defined]
    client.stop_stream()
    client.close()
    assert order == ["fast", "slow"], order
