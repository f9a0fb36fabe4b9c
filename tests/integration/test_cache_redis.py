"""The shared store: two gateway replicas on one real ``redis-server``.

Generated through replica A, fetched by URL from replica B; identical requests spread
over both replicas cost one generation (a lease in Redis); Redis SIGKILLed under load
costs no request (misses, counted) and hits resume when it is back.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import httpx
import pytest

from image_router.triton import TritonServer
from tests.integration.test_cache import cached_routes, inferences, openai
from tests.procs import GatewayProcess, RedisProcess, scrape

pytestmark = pytest.mark.integration


@pytest.fixture()
def replicas(start_gateway: Callable[..., GatewayProcess], redis: RedisProcess) -> tuple[GatewayProcess, ...]:
    # a generous store bound: these tests are about coordination through a healthy
    # Redis, and on a loaded host a 20 ms lookup (80 ms lease) bound reads a slow
    # answer as "store down", so a replica rightly generates on its own (the bound
    # itself: test_redis_killed_under_load_... and tests/unit/test_cache_lease.py)
    text = cached_routes(redis.url).replace("ttl_s: 600}", "ttl_s: 600, timeout_ms: 250}")
    return start_gateway(text, name="a.yaml"), start_gateway(text, name="b.yaml")


def test_generated_on_one_replica_served_by_url_from_the_other(replicas: tuple[GatewayProcess, ...]) -> None:
    a, b = replicas
    r = openai(a, "thumb of a shared owl", response_format="url")
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    on_b = httpx.get(url.replace(a.url, b.url))
    assert on_b.status_code == 200 and on_b.headers["content-type"] == "image/png"
    assert on_b.headers["x-router-route"] == "thumbs"
    # and the result itself is a hit on B
    assert openai(b, "thumb of a shared owl").headers["x-cache"] == "HIT"


def test_identical_requests_on_two_replicas_are_one_generation(
    replicas: tuple[GatewayProcess, ...], triton: TritonServer
) -> None:
    before = inferences(triton, "preview")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"prompt": "slowly drawn shared harbour", "seed": 11}
            targets = itertools.islice(itertools.cycle(replicas), 50)
            return await asyncio.gather(*(client.post(gw.url + "/api/v1/generate", json=body) for gw in targets))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    assert len({r.content for r in responses}) == 1
    caches = [r.headers["x-cache"] for r in responses]
    described = [httpx.get(gw.url + "/admin/cache", headers=gw.admin).json() for gw in replicas]
    assert caches.count("MISS") == 1, (caches, [(d["store_errors"], d["results"]) for d in described])
    assert inferences(triton, "preview") == before + 1


def test_redis_killed_under_load_fails_no_request_and_hits_resume(
    start_gateway: Callable[..., GatewayProcess], redis: RedisProcess
) -> None:
    # no memory layer: every hit must come from Redis
    a = start_gateway(cached_routes(redis.url).replace("ttl_s: 600}", "ttl_s: 600, memory_bytes: 0}"))
    assert openai(a, "thumb of a steady heron", seed=1).headers["x-cache"] == "MISS"
    assert openai(a, "thumb of a steady heron", seed=1).headers["x-cache"] == "HIT"

    async def load(seconds: float) -> list[tuple[int, str, float]]:
        out: list[tuple[int, str, float]] = []
        async with httpx.AsyncClient(timeout=30) as client:
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                i += 1
                t0 = time.monotonic()
                r = await client.post(a.url + "/api/v1/generate", json={"prompt": f"thumb {i % 5}", "seed": 1})
                out.append((r.status_code, r.headers.get("x-cache", ""), time.monotonic() - t0))
        return out

    async def kill_during() -> list[tuple[int, str, float]]:
        task = asyncio.ensure_future(load(4.0))
        await asyncio.sleep(1.0)
        redis.kill()
        return await task

    results = asyncio.run(kill_during())
    assert results and all(status == 200 for status, _, _ in results), {s for s, _, _ in results}
    assert max(seconds for _, _, seconds in results) < 2.0, "a dead store never holds a request long"
    assert any(cache == "MISS" for _, cache, _ in results[len(results) // 2 :])  # the store is gone: misses
    failures = scrape(a)
    assert sum(v for (name, _), v in failures.items() if name == "router_cache_store_failures_total") > 0
    # back on the same port: the circuit closes after its cooldown and hits resume
    redis.start()
    assert openai(a, "thumb of a steady heron", seed=1).headers["x-cache"] in ("MISS", "HIT")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if openai(a, "thumb of a steady heron", seed=1).headers["x-cache"] == "HIT":
            break
        time.sleep(0.3)
    else:
        pytest.fail("hits did not resume after Redis came back")
