"""The pure parts of issue 30's bounds, without sockets: the sign-in throttle, signed
image URLs, webhook signatures with a timestamp, the upscaling pixel bound and the
gRPC guard's decision (its integration tests are in tests/integration/test_security.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from image_router.errors import Unauthorized
from image_router.http.admin_api import SignInThrottle
from image_router.http.image_files import UrlSigner
from image_router.policy.size import MAX_UPSCALED_PIXELS, upscale_refusal
from image_router.rollouts.webhook import TOLERANCE_S, sign, verify
from image_router.rpc.guard import Guard


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_five_wrong_tokens_from_one_address_close_it_for_the_window() -> None:
    clock = Clock()
    throttle = SignInThrottle(limit=5, window_s=60, clock=clock)
    for _ in range(4):
        throttle.failed("10.0.0.1")
        assert throttle.retry_after("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == pytest.approx(60)
    assert throttle.retry_after("10.0.0.2") == 0  # another address is not affected
    clock.now += 30
    assert throttle.retry_after("10.0.0.1") == pytest.approx(30)
    clock.now += 31
    assert throttle.retry_after("10.0.0.1") == 0  # the failures aged out


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = SignInThrottle(limit=1, max_addresses=100, clock=Clock())
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 100
    assert throttle.retry_after("10.0.3.231") > 0  # the latest is kept, the oldest forgotten
    assert throttle.retry_after("10.0.0.0") == 0


def test_a_signed_image_url_is_valid_for_its_image_until_it_expires() -> None:
    clock = Clock(1_000_000)
    signer = UrlSigner(b"secret", clock)
    name = "0123456789abcdef0123456789abcdef"
    query = dict(part.split("=") for part in signer.query(name, ttl_s=3600).split("&"))
    assert signer.valid(name, query["expires"], query["sig"])
    assert not signer.valid("f" * 32, query["expires"], query["sig"])  # another image
    assert not signer.valid(name, str(int(query["expires"]) + 1), query["sig"])  # extended
    sig = query["sig"]
    assert not signer.valid(name, query["expires"], sig[:-1] + ("1" if sig.endswith("0") else "0"))
    assert not UrlSigner(b"other", clock).valid(name, query["expires"], query["sig"])
    for expires in (None, "", "9" * 5000, "1e9", "²"):
        assert not signer.valid(name, expires, query["sig"])
    clock.now += 3601
    assert not signer.valid(name, query["expires"], query["sig"])


def test_a_webhook_signature_binds_its_timestamp_and_expires() -> None:
    body = b'{"action": "promote"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"}
    headers["webhook-signature"] = sign("s3cret", "msg_1", 1700000000, body)
    assert headers["webhook-signature"].startswith("v1,")
    assert verify("s3cret", headers, body, now=1700000000 + 10)
    assert not verify("s3cret", headers, body, now=1700000000 + TOLERANCE_S + 1)  # a replay, later
    assert not verify("s3cret", headers, body + b" ", now=1700000000)
    assert not verify("wrong", headers, body, now=1700000000)
    moved = {**headers, "webhook-timestamp": "1700000500"}  # a fresh time on an old signature
    assert not verify("s3cret", moved, body, now=1700000500)
    assert not verify("s3cret", {**headers, "webhook-timestamp": "9" * 5000}, body, now=1700000000)


def test_upscaling_is_bounded_by_the_output_pixels_of_a_request() -> None:
    assert upscale_refusal(2048, 2048, 2) is None
    assert upscale_refusal(1448, 1448, 4) is None
    refusal = upscale_refusal(2048, 2048, 4)
    assert refusal is not None and str(MAX_UPSCALED_PIXELS) in refusal


def _details(method: str, authorization: str | None) -> Any:
    class Details:
        pass

    details = Details()
    details.method = method  # type: ignore[attr-defined]
    details.invocation_metadata = (("authorization", authorization),) if authorization else ()  # type: ignore[attr-defined]
    return details


def test_the_grpc_guard_refuses_before_the_service_handler_is_even_looked_up() -> None:
    asked: list[str] = []

    def authenticate(authorization: str | None) -> object:
        if authorization != "Bearer good":
            raise Unauthorized("the API key is not valid")
        return object()

    async def continuation(details: Any) -> Any:
        asked.append(details.method)
        return grpc.unary_unary_rpc_method_handler(lambda r, c: r, request_deserializer=lambda b: b)

    guard = Guard(authenticate)

    async def run() -> None:
        refused = await guard.intercept_service(
            continuation, _details("/inference.GRPCInferenceService/ModelInfer", None)
        )
        assert refused is not None and refused.request_deserializer is not None
        assert refused.request_deserializer(b"\xff\xff garbage") is None  # never parsed
        assert asked == []
        for method, key in (("ModelInfer", "Bearer good"), ("ServerLive", None)):
            await guard.intercept_service(continuation, _details(f"/inference.GRPCInferenceService/{method}", key))
        await guard.intercept_service(continuation, _details("/grpc.health.v1.Health/Check", None))
        assert len(asked) == 3

    asyncio.run(run())
