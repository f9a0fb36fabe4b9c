"""docs/cache.md on more than one gateway and on reload: a purge on one replica leaves
another's memory stale for at most 5 s (with a shared store: Redis, or a disk store,
which the docs call safe across processes), and a reload naming a store that cannot be
used is rejected while the running table keeps serving from the old one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.test_cache import cached_routes, openai
from tests.procs import GatewayProcess, RedisProcess

pytestmark = pytest.mark.integration

STALE_S = 5.0  # docs/cache.md: other replicas' memory holds a purged entry at most 5 s


def purged_everywhere_within(a: GatewayProcess, b: GatewayProcess, prompt: str) -> float:
    """Make ``prompt``'s image on A, read it on B (into B's memory), purge it on A; how
    long B goes on answering it as a hit."""
    assert openai(a, prompt, seed=6).headers["x-cache"] == "MISS"
    for _ in range(2):  # the second from B's memory
        assert openai(b, prompt, seed=6).headers["x-cache"] == "HIT"
    purge = httpx.post(a.url + "/admin/cache/purge", json={"prompt": prompt}, headers=a.admin, timeout=30)
    assert purge.status_code == 200 and purge.json()["removed"] >= 1, purge.text
    t0 = time.monotonic()
    while time.monotonic() - t0 < STALE_S + 10:
        if openai(b, prompt, seed=6).headers["x-cache"] != "HIT":
            return time.monotonic() - t0
        time.sleep(0.25)
    return time.monotonic() - t0


def test_a_purge_reaches_another_replicas_memory_within_5_s_on_redis(
    start_gateway: Callable[..., GatewayProcess], redis: RedisProcess
) -> None:
    text = cached_routes(redis.url)
    a, b = start_gateway(text, name="a.yaml"), start_gateway(text, name="b.yaml")
    stale = purged_everywhere_within(a, b, "thumb of a purged gull")
    assert stale <= STALE_S + 0.5, f"replica B served the purged entry for {stale:.1f} s"


def test_a_purge_reaches_another_replicas_memory_within_5_s_on_a_shared_disk_store(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    text = cached_routes(f"disk://{tmp_path / 'shared'}")
    a, b = start_gateway(text, name="a.yaml"), start_gateway(text, name="b.yaml")
    stale = purged_everywhere_within(a, b, "thumb of a purged kite")
    assert stale <= STALE_S + 0.5, f"replica B served the purged entry for {stale:.1f} s"


def test_a_reload_to_an_unusable_store_is_rejected_and_the_old_store_keeps_serving(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = start_gateway(cached_routes(f"disk://{tmp_path / 'cache'}"), extra=["--no-watch"])
    assert openai(gw, "thumb of a lasting fern", seed=2).headers["x-cache"] == "MISS"
    before = httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10).json()["active"]["digest"]
    gw.routes.write_text(cached_routes("disk:///proc/no-such-dir/cache"))  # not creatable, even by root
    r = httpx.post(gw.url + "/admin/reload", headers=gw.admin, timeout=30)
    assert r.status_code == 422 and r.json()["ok"] is False, r.text
    assert any("/proc/no-such-dir/cache" in e for e in r.json()["errors"]), r.json()
    after = httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10).json()["active"]["digest"]
    assert after == before
    assert openai(gw, "thumb of a lasting fern", seed=2).headers["x-cache"] == "HIT"  # the old store, still
