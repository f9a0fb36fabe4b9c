"""A shared Redis that hangs (SIGSTOP: the socket stays open, nothing answers) rather
than dies, and what never reaches the store at all.

README: the store never fails or holds up a request (each call within its bound, 20 ms
for a lookup, and circuits); "without one, or while it does not answer … each replica
counts on its own". A SIGKILLed Redis refuses connections at once; a hung one is the
harder case: every call must time out on its own bound, a request is held up by at most
their sum, and once the circuits open by nothing.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Callable

import httpx
import pytest
import redis as redis_client

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess, RedisProcess

pytestmark = pytest.mark.integration

KEY = "sk-acme-0123456789abcdef"


def routes(url: str, tenants: bool = True) -> str:
    """The cache (no memory layer: every hit from Redis) and, with ``tenants``, the state
    store and a tenant's shared rate limit on one Redis."""
    text = (
        TIERS
        + f"""
cache: {{store: "{url}", memory_bytes: 0}}
default_route: {{name: main, model: noop, budget_ms: 5000, cache: {{seedless: share}}}}
"""
    )
    if tenants:
        text += f"""
state: {{store: "{url}"}}
tenants:
  mode: keys
  tenants:
    acme: {{keys: ["{KEY}"], requests_per_s: 20, burst: 5}}
"""
    return text


def post(gw: GatewayProcess, prompt: str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.post(
        gw.url + "/api/v1/generate",
        json={"prompt": prompt, "seed": 1},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    return r, time.monotonic() - t0


def test_a_hung_redis_costs_each_request_at_most_its_bounds_and_limits_stay_local(
    start_gateway: Callable[..., GatewayProcess], state_redis: RedisProcess
) -> None:
    gw = start_gateway(routes(state_redis.url))
    assert post(gw, "a heron")[0].headers["x-cache"] == "MISS"
    assert post(gw, "a heron")[0].headers["x-cache"] == "HIT"  # from Redis: no memory layer
    healthy = []
    for i in range(12):  # misses: a tenant check, a lookup, a lease, a generation, a write
        r, seconds = post(gw, f"a crane {i}")
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
        healthy.append(seconds)
        time.sleep(0.06)  # under the tenant's 20/s
    assert state_redis.process is not None
    os.kill(state_redis.process.pid, signal.SIGSTOP)
    try:
        hung = []
        for i in range(20):
            r, seconds = post(gw, "a heron" if i % 2 else f"a stork {i}")
            # answered, from the model (the stored heron cannot be read), limited locally
            assert r.status_code == 200, r.text
            assert r.headers["x-cache"] == "MISS" and r.headers["x-router-tenant"] == "acme"
            hung.append(seconds)
            time.sleep(0.06)
    finally:
        os.kill(state_redis.process.pid, signal.SIGCONT)
    # Each call to a hung store waits out its bound, never Redis's own (seconds-long)
    # socket timeout: the tenant check (50 ms) and the lookup (20 ms), and the lease, asked
    # twice at 80 ms each. Each kind of call has a circuit that opens after 10 unanswered
    # in a row (the lease its own: a burst's timed-out lookups must not stop coordination),
    # so only the first misses pay: from the 11th on, nothing but a probe every 2 s.
    bounds_s = 0.05 + 0.02 + 2 * 0.08
    typical = statistics.median(healthy)
    print(f"\nhealthy median {typical * 1000:.0f} ms, max {max(healthy) * 1000:.0f}; "
          f"hung: first {hung[0] * 1000:.0f} ms, max {max(hung) * 1000:.0f}, "
          f"median of the last 8 {statistics.median(hung[-8:]) * 1000:.0f}")  # fmt: skip
    assert max(hung) < max(healthy) + bounds_s + 0.15, (healthy, hung)  # the bounds, and a busy 2-core host
    assert statistics.median(hung[-8:]) - typical < 0.03, (healthy, hung)  # the circuits open: no store wait
    # back: hits resume
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if post(gw, "a heron")[0].headers["x-cache"] == "HIT":
            break
        time.sleep(0.3)
    else:
        pytest.fail("hits did not resume after Redis came back")


def test_a_malformed_image_id_never_reaches_the_store(
    start_gateway: Callable[..., GatewayProcess], state_redis: RedisProcess
) -> None:
    """An image URL that is not an image id (a path, a short or non-hex name) is a 404
    without a store call; a well-formed unknown id is looked up (so the count below is
    the one that would move)."""
    gw = start_gateway(routes(state_redis.url, tenants=False))
    server = redis_client.Redis.from_url(state_redis.url)

    def store_calls() -> int:
        stats = server.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    httpx.get(gw.url + "/healthz", timeout=10)
    before = store_calls()
    time.sleep(0.5)
    assert store_calls() == before, "the gateway talks to Redis on its own: this count cannot tell"
    for bad in ("../../etc/passwd.png", "zz.png", "0" * 31 + ".png", "G" * 32 + ".png", "%2e%2e%2fkeys.png"):
        assert httpx.get(gw.url + "/v1/images/" + bad, timeout=10).status_code == 404, bad
    assert store_calls() == before
    assert httpx.get(gw.url + "/v1/images/" + "0" * 32 + ".png", timeout=10).status_code == 404
    assert store_calls() > before
    server.close()


def test_when_the_store_will_not_take_an_image_the_answer_is_inline_not_a_dead_url(
    start_gateway: Callable[..., GatewayProcess], state_redis: RedisProcess
) -> None:
    """docs/cache.md: if the store will not take the image, ``response_format: url``
    falls back to ``b64_json`` rather than a URL that points nowhere."""
    gw = start_gateway(routes(state_redis.url, tenants=False))
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "an owl", "seed": 4, "response_format": "url"}
    stored = httpx.post(gw.url + "/v1/images/generations", json=body, headers=headers, timeout=30)
    assert stored.status_code == 200 and "url" in stored.json()["data"][0], stored.text
    assert state_redis.process is not None
    os.kill(state_redis.process.pid, signal.SIGSTOP)
    try:
        inline = httpx.post(gw.url + "/v1/images/generations", json={**body, "seed": 5}, headers=headers, timeout=30)
    finally:
        os.kill(state_redis.process.pid, signal.SIGCONT)
    assert inline.status_code == 200, inline.text
    item = inline.json()["data"][0]
    assert "url" not in item and item["b64_json"], item
