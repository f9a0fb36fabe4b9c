"""The state store on a real ``redis-server``: the same operations as the SQLite store,
the same GCRA decisions as the pure step, and a Redis that may evict refused — at start
(``router serve`` exits 2 with the reason) and at reload (refused; the running table
keeps serving)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as syncredis

from image_router.config import load_file
from image_router.config.table import StateConfig
from image_router.errors import StateStoreError
from image_router.gateway import Gateway
from image_router.reload import RoutesReloader
from image_router.state import RedisState, open_state
from image_router.triton.launcher import free_port
from tests.procs import RedisProcess
from tests.unit.test_state_gcra import START_US, TENANTS, pure, sequence

pytestmark = pytest.mark.integration


def set_policy(server: RedisProcess, policy: str) -> None:
    with syncredis.Redis.from_url(server.url) as client:
        client.config_set("maxmemory-policy", policy)


def test_leases_swaps_and_counters_on_redis(state_redis: RedisProcess) -> None:
    async def run() -> None:
        store = RedisState(state_redis.url, 0.05)
        assert await store.lease("l", "a", 0.3) and not await store.lease("l", "b", 0.3)
        assert await store.lease("l", "a", 0.3), "the holder renews"
        await store.release("l", "a")
        assert await store.lease("l", "b", 0.3)
        assert await store.swap("s", None, b"v1", None)
        assert not await store.swap("s", None, b"x", None) and not await store.swap("s", b"v0", b"x", None)
        assert await store.swap("s", b"v1", b"v2", None)
        assert await store.get_many(["s", "missing"]) == [b"v2", None]
        await asyncio.gather(*(store.add_counts("c", {"requests": 1, "errors": 1}, 60.0) for _ in range(5)))
        assert await store.counts("c") == {"requests": 5, "errors": 5}
        await store.aclose()

    asyncio.run(run())
    with syncredis.Redis.from_url(state_redis.url) as client:
        assert client.pttl("s") == -1, "a swap without a ttl never expires"
        assert client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) > 0, "scripts by sha"
        assert "cmdstat_eval" not in client.info("commandstats"), "no script sent with its call"


@pytest.mark.parametrize("tenant", TENANTS, ids=lambda t: t.name)
def test_the_lua_script_decides_like_the_pure_step(state_redis: RedisProcess, tenant: object) -> None:
    """The same sequences as tests/unit/test_state_gcra.py, on the script's own
    arithmetic (its clock fixed through its optional ``now`` argument)."""
    from image_router.config.table import Tenant
    from image_router.policy.tenants import limit_args

    assert isinstance(tenant, Tenant)

    async def run(seq: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
        store = RedisState(state_redis.url, 0.05)
        out = []
        for at, images in seq:
            keys = [f"t:{tenant.name}:{n}:rate", f"t:{tenant.name}:{n}:day"]
            reply = await store.limit(keys, [*limit_args(tenant, images), START_US + at])
            out.append((reply[0], reply[1]))
        await store.aclose()
        return out

    for seed in range(3):
        seq = sequence(tenant, seed)
        assert asyncio.run(run(seq, seed)) == pure(tenant, seq), f"seed {seed}"


def test_a_redis_that_may_evict_is_refused_and_one_without_persistence_warned(
    state_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="router.state"):
        store = open_state(StateConfig(state_redis.url))
    assert any("appendonly yes" in r.message for r in caplog.records), "no persistence: said"
    asyncio.run(store.aclose())
    set_policy(state_redis, "allkeys-lru")
    with pytest.raises(StateStoreError) as info:
        open_state(StateConfig(state_redis.url))
    assert "maxmemory-policy allkeys-lru" in info.value.message and "noeviction" in info.value.message


def test_router_serve_exits_2_naming_the_eviction_policy(redis: RedisProcess, tmp_path: Path) -> None:
    """The conftest ``redis`` runs as a cache (allkeys-lru): not a state store."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"models: {{draft: {{backend: triton}}}}\nstate: {{store: '{redis.url}'}}\ndefault_route: draft")
    done = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "serve", "--routes", str(routes), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "maxmemory-policy allkeys-lru" in done.stderr and "Traceback" not in done.stderr


def test_a_reload_onto_a_redis_that_may_evict_is_refused_and_the_table_kept(
    state_redis: RedisProcess, tmp_path: Path
) -> None:
    """Checked at every reload, even when the state block did not change: the policy is
    the server's, and may have been changed under the gateway."""
    routes = tmp_path / "routes.yaml"
    text = f"models: {{draft: {{backend: triton}}}}\nstate: {{store: '{state_redis.url}'}}\ndefault_route: draft\n"
    routes.write_text(text)
    gateway = Gateway(load_file(routes))
    reloader = RoutesReloader(routes, gateway.swap, gateway.table)
    running = gateway.table
    set_policy(state_redis, "allkeys-lru")
    routes.write_text(text.replace("default_route: draft", "default_budget_ms: 4000\ndefault_route: draft"))
    result = reloader.reload()
    assert not result.ok and "maxmemory-policy allkeys-lru" in str(result.to_dict()), result.to_dict()
    assert gateway.table is running, "the running table keeps serving"
    set_policy(state_redis, "noeviction")
    assert reloader.reload().ok and gateway.table is not running
    asyncio.run(gateway.aclose())


def test_a_managed_redis_without_config_needs_the_operators_word(tmp_path: Path) -> None:
    """CONFIG renamed away, as managed Redis services do: refused unless
    ``assume_noeviction: true``, then used with a warning."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
         "--rename-command", "CONFIG", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(syncredis.ConnectionError), syncredis.Redis.from_url(url) as client:
                if client.ping():
                    break
            time.sleep(0.05)
        with pytest.raises(StateStoreError, match="assume_noeviction: true"):
            open_state(StateConfig(url))
        store = open_state(StateConfig(url, assume_noeviction=True))

        async def use() -> bool | None:
            done = await store.swap("k", None, b"v", None)
            await store.aclose()
            return done

        assert asyncio.run(use()) is True
    finally:
        server.terminate()
        server.wait(10)
