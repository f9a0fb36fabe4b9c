"""Tenant limits kept in the durable state store, against real processes: a gateway
restart on SQLite keeps the day's image count, and two replicas whose Redis died and
came back count together again (not each on its own)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess, RedisProcess

pytestmark = pytest.mark.integration
Start = Callable[..., GatewayProcess]
KEY = "sk-daily-0123456789abcdef"


def _routes(store: str, per_day: int) -> str:
    return (
        TIERS
        + f"""
state: {{store: "{store}"}}
tenants:
  mode: keys
  tenants:
    daily: {{keys: ["{KEY}"], images_per_day: {per_day}}}
default_route: {{name: main, model: noop, budget_ms: 5000}}
"""
    )


def _ask(gw: GatewayProcess, n: int = 1) -> int:
    body = {"prompt": "a count", "n": n, "response": "json"}
    return httpx.post(
        gw.url + "/api/v1/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ).status_code


def test_a_restart_on_sqlite_keeps_the_days_image_count(start_gateway: Start, tmp_path: Path) -> None:
    routes = _routes(f"sqlite://{tmp_path / 'state.db'}", 5)
    first = start_gateway(routes)
    assert [_ask(first, 2), _ask(first, 2)] == [200, 200]
    first.stop()
    again = start_gateway(routes, name="again.yaml")
    assert _ask(again) == 200, "the fifth image of the day"
    assert _ask(again) == 429, "the day's count survived the restart: a sixth is over the limit"


def test_replicas_count_together_again_once_redis_is_back(start_gateway: Start, tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path, policy="noeviction").start()
    try:
        routes = _routes(redis.url, 6)
        replicas = [start_gateway(routes, name=f"r{i}.yaml") for i in range(2)]
        redis.kill()
        for gw in replicas:  # while it is gone each replica counts alone (2 of its own 6 used)
            assert [_ask(gw), _ask(gw)] == [200, 200]
        redis.start()  # back, empty (no persistence here): the day's shared count starts again
        time.sleep(3.0)  # past the store guard's probe delay (2 s)
        statuses = [_ask(replicas[i % 2]) for i in range(12)]
        # counting together: 6 for both; had they stayed alone, 4 more each (8)
        assert statuses.count(200) == 6, statuses
    finally:
        redis.stop()
