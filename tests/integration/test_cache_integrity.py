"""The result cache on a real ``redis-server`` it shares with other owners' keys.

Someone who can write to Redis replaces the picture behind an image URL, or copies a
result under another request's key: the gateway reads back, checks (an image hashes to
its id, a result carries its key's digest), answers a 404 or a fresh generation, removes
the entry and counts it — never serves it. ``purge {"all": true}`` removes the cache's
keys only: rollout state and tenant counters beside them survive.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from image_router.cache import Entry
from image_router.cache.service import SHARED_MEMORY_TTL_S
from tests.integration.test_cache import cached_routes, openai
from tests.procs import GatewayProcess, RedisProcess, scrape

pytestmark = pytest.mark.integration

FOREIGN = {"ro:photo:abc123": b"state", "ro:photo:abc123:w3:b": b"counts", "t:acme:images:20000": b"41"}


@pytest.fixture()
def shared(start_gateway: Callable[..., GatewayProcess], redis: RedisProcess) -> tuple[GatewayProcess, redis.Redis]:
    return start_gateway(cached_routes(redis.url)), redis_client(redis)


def redis_client(server: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def counters(gw: GatewayProcess) -> dict[str, object]:
    described: dict[str, object] = httpx.get(gw.url + "/admin/cache", headers=gw.admin).json()
    return described


def test_a_tampered_image_entry_is_a_404_removed_and_counted(shared: tuple[GatewayProcess, redis.Redis]) -> None:
    gw, client = shared
    r = openai(gw, "thumb of a guarded owl", response_format="url")
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    name = url.rsplit("/", 1)[1].split(".")[0]
    assert httpx.get(url).status_code == 200
    stored = client.get(f"c:i:{name}")
    assert stored is not None, "image records live under the cache's c: prefix"
    other = np.full((1, 64, 64, 3), 200, np.uint8)  # another picture behind the same id
    client.set(f"c:i:{name}", Entry(other, "draft", "1", "thumbs", (1,), 0.0).to_bytes())
    answer = httpx.get(url.replace(".png", ".webp"))
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "image_not_found", answer.text
    assert client.get(f"c:i:{name}") is None, "removed"
    assert counters(gw)["unverified"] == 1
    assert scrape(gw)[("router_cache_unverified_total", ())] == 1.0


def test_a_result_copied_under_another_key_is_never_served(shared: tuple[GatewayProcess, redis.Redis]) -> None:
    gw, client = shared
    first = openai(gw, "thumb of a red kite", seed=5)
    second = openai(gw, "thumb of a blue kite", seed=5)
    assert first.status_code == second.status_code == 200
    keys = {k.decode(): client.get(k) for k in client.scan_iter("c:r:*")}
    assert len(keys) == 2, keys
    red, blue = list(keys)
    time.sleep(SHARED_MEMORY_TTL_S + 0.5)  # the replica's own memory holds an entry this long
    client.set(blue, keys[red])  # one prompt's picture under the other's key
    client.set(red, keys[blue])
    again = [openai(gw, "thumb of a red kite", seed=5), openai(gw, "thumb of a blue kite", seed=5)]
    assert [r.headers["x-cache"] for r in again] == ["MISS", "MISS"]  # generated anew: nothing swapped served
    for before, after in zip((first, second), again, strict=True):
        assert after.json()["data"][0]["b64_json"] == before.json()["data"][0]["b64_json"]
    assert counters(gw)["unverified"] == 2
    png = base64.b64decode(again[0].json()["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_purge_all_on_redis_leaves_rollout_state_and_tenant_counts(shared: tuple[GatewayProcess, redis.Redis]) -> None:
    gw, client = shared
    for key, value in FOREIGN.items():
        client.set(key, value)
    assert openai(gw, "thumb of a purged pear", response_format="url").status_code == 200
    assert any(True for _ in client.scan_iter("c:*"))
    purge = httpx.post(gw.url + "/admin/cache/purge", json={"all": True}, headers=gw.admin)
    assert purge.status_code == 200 and purge.json()["removed"] >= 2, purge.text
    assert not any(True for _ in client.scan_iter("c:*"))
    assert {k: client.get(k) for k in FOREIGN} == FOREIGN
