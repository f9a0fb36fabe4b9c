"""Spend budgets with real processes: Triton, one ``redis-server`` as the state store
and two gateway replicas sharing it. Draft is the intended tier, noop the cheap one
(prices per image only, so every figure is exact)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import redis as syncredis

from tests.procs import GatewayProcess, RedisProcess

pytestmark = pytest.mark.integration

KEY = "acme-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def routes(store: str, amount: float, on_exhausted: str, fail: str = "open") -> str:
    return f"""
backends:
  triton: {{url: "${{TRITON_URL}}"}}
state: {{store: "{store}", timeout_ms: 200}}
billing: {{currency: USD, gpu_hour_price: 0, quote_margin: 1.25}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150, price: {{per_image: 0.01}}}}
  noop: {{backend: triton, triton_model: noop, latency_hint_ms: 20, price: {{per_image: 0.001}}}}
default_route: {{name: default, model: draft, fallback: [noop], budget_ms: 30000}}
tenants:
  mode: keys
  tenants:
    acme:
      keys: ["{KEY}"]
      budget: {{limits: [{{per: day, amount: {amount}}}], on_exhausted: {on_exhausted}, fail: {fail}}}
"""


def spent_micros(server: RedisProcess) -> dict[str, int]:
    with syncredis.Redis.from_url(server.url) as client:
        key = next(k for k in client.scan_iter("b:acme:day:*"))
        return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def spent_micros_or_none(server: RedisProcess) -> int | None:
    with syncredis.Redis.from_url(server.url) as client:
        keys = list(client.scan_iter("b:acme:day:*"))
        return int(client.hget(keys[0], "spent") or 0) if keys else None


def settled(server: RedisProcess, reserved: int = 0, timeout_s: float = 10.0) -> dict[str, int]:
    """The window once every settlement has landed (settling is off the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = spent_micros(server)
        if got.get("reserved") == reserved or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_two_replicas_hammered_never_pass_the_budget(
    start_gateway: Callable[..., GatewayProcess], state_redis: RedisProcess
) -> None:
    """$0.05/day, reject mode, 24 concurrent draft requests over both replicas: at most
    5 are made (the reservation is the quote, 1.25 x the price, so 4 fit at first and
    one more after settlements); every other answer is 429 insufficient_quota with
    x-should-retry: false; what the store counts equals the sum of usage.cost."""
    text = routes(state_redis.url, 0.05, "reject")
    a, b = start_gateway(text, "a.yaml"), start_gateway(text, "b.yaml")

    async def hammer() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [
                client.post(gw.url + "/api/v1/generate", json={"prompt": f"fox {i}", "response": "json"}, headers=AUTH)
                for i, gw in enumerate([a, b] * 12)
            ]
            return await asyncio.gather(*calls)

    answers = asyncio.run(hammer())
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert 4 <= len(ok) <= 5, [r.status_code for r in answers]
    for r in refused:
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
        assert r.headers["x-should-retry"] == "false"
    window = settled(state_redis)
    assert window["spent"] <= 50_000, "never past the limit (the quote covers the price: no overshoot)"
    assert window["spent"] == round(sum(r.json()["usage"]["cost"] for r in ok) * 1_000_000)
    assert {r.headers["x-router-model"].split("@")[0] for r in ok} == {"draft"}


def test_downgrade_then_refuse_and_the_openai_sdk_does_not_retry(
    start_gateway: Callable[..., GatewayProcess], state_redis: RedisProcess
) -> None:
    """$0.025/day, downgrade mode: draft while its quote (0.0125) fits, then noop tagged
    draft:budget until noop's quote (0.00125) does not fit, then 429 insufficient_quota —
    which the openai SDK raises as a RateLimitError after exactly one HTTP request."""
    gateway = start_gateway(routes(state_redis.url, 0.025, "downgrade"))
    served: list[tuple[str, str]] = []
    for i in range(40):
        r = httpx.post(gateway.url + "/api/v1/generate", json={"prompt": f"cat {i}", "response": "json"}, headers=AUTH)
        if r.status_code != 200:
            assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
            break
        served.append((r.headers["x-router-model"].split("@")[0], r.headers.get("x-router-fallback", "")))
        settled(state_redis)  # the next request sees this one's settlement
    # 0.025: two drafts reserve 0.0125 each (the first settles at 0.01, leaving 0.015 ->
    # one more draft: 0.005 left), then noop x4 (0.001 each, quote 0.00125)
    assert served[:2] == [("draft", ""), ("draft", "")], served
    assert all(s == ("noop", "draft:budget") for s in served[2:]) and len(served) == 6, served
    assert settled(state_redis)["spent"] == 24_000

    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as http:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, http_client=http)
        with pytest.raises(openai.RateLimitError) as info:
            client.images.generate(prompt="one more", model="default")
        client.close()
    assert info.value.code == "insufficient_quota"
    assert len(sent) == 1, "x-should-retry: false: the SDK made one request"


def test_redis_killed_fail_closed_refuses_and_fail_open_holds_the_last_available(
    start_gateway: Callable[..., GatewayProcess], state_redis: RedisProcess, tmp_path: Path
) -> None:
    """With the store gone, a `fail: closed` tenant gets 503 store_unavailable; a
    `fail: open` one is served against this replica's shadow of what the store last said
    was available (0.05 - one quote of 0.0125 = 0.0375: three more drafts), then 429.
    Redis back (empty: no persistence), the three settlements queued meanwhile land once."""
    text = routes(state_redis.url, 0.05, "reject").replace(
        "      budget: {limits: [{per: day, amount: 0.05}], on_exhausted: reject, fail: open}",
        "      budget: {limits: [{per: day, amount: 0.05}], on_exhausted: reject, fail: open}\n"
        '    shut:\n      keys: ["shut-0123456789abcdef"]\n'
        "      budget: {limits: [{per: day, amount: 0.05}], fail: closed}",
    )
    gateway = start_gateway(text)

    def ask(key: str, i: int) -> httpx.Response:
        body = {"prompt": f"owl {i}", "response": "json"}
        return httpx.post(gateway.url + "/api/v1/generate", json=body, headers={"Authorization": f"Bearer {key}"})

    assert ask(KEY, 0).status_code == 200
    settled(state_redis)
    state_redis.kill()
    closed = ask("shut-0123456789abcdef", 1)
    assert closed.status_code == 503 and closed.json()["error"]["code"] == "store_unavailable", closed.text
    codes = [ask(KEY, i).status_code for i in range(1, 6)]
    assert codes == [200, 200, 200, 429, 429], codes
    back = RedisProcess(tmp_path, port=state_redis.port, policy="noeviction").start()
    try:
        deadline = time.monotonic() + 30
        while spent_micros_or_none(state_redis) != 30_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # and nothing lands twice
        assert spent_micros(state_redis) == {"spent": 30_000, "reserved": 0}
    finally:
        back.stop()
