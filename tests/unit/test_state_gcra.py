"""One GCRA, three implementations that must agree: the pure step
(:mod:`image_router.state.gcra`), the SQLite store that runs it in a transaction, and a
replica's own float-seconds count (:class:`image_router.policy.tenants.TenantState`, used
when the shared store does not answer). The Redis script is driven with the same
sequences against a real server in ``tests/integration/test_state_redis.py``."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from image_router.config.table import Tenant
from image_router.policy.tenants import TenantState, limit_args
from image_router.state import SqliteState
from image_router.state.gcra import step

START_US = 1_800_000_000 * 1_000_000
TENANTS = [
    Tenant("fast", (), requests_per_s=5000, burst=3, images_per_day=400),
    Tenant("slow", (), requests_per_s=2, burst=2, images_per_day=6),
    Tenant("rate-only", (), requests_per_s=40, burst=1),
]


def sequence(tenant: Tenant, seed: int, n: int = 400) -> list[tuple[int, int]]:
    """(µs since the start, images): bursts and pauses around the tenant's interval, in
    steps of 10 µs (off the 1 µs slack the float version allows)."""
    rng = random.Random(seed)
    interval = limit_args(tenant, 0)[0]
    at, out = 0, []
    for _ in range(n):
        at += 10 * round(rng.choice([0, 0.3, 0.9, 1.0, 1.1, 3.0]) * interval / 10)
        out.append((at, rng.choice([1, 1, 2, 3])))
    return out


def pure(tenant: Tenant, seq: list[tuple[int, int]]) -> list[tuple[int, int]]:
    tat, used, out = 0, 0, []
    for at, images in seq:
        result = step(tat, used, START_US + at, limit_args(tenant, images))
        tat = result.tat_us if result.tat_us is not None else tat
        used = result.used if result.used is not None else used
        out.append((result.reply[0], result.reply[1]))
    return out


def local(tenant: Tenant, seq: list[tuple[int, int]]) -> list[tuple[int, int]]:
    state, out = TenantState(), []
    for at, images in seq:
        decision = state.admit(tenant, images, 1000.0 + at / 1e6, START_US / 1e6)  # one day
        if decision.allowed:
            state.done()
        out.append((int(decision.allowed), {"": 0, "rate": 1, "images": 2}[decision.reason]))
    return out


def sqlite(tenant: Tenant, seq: list[tuple[int, int]], path: Path) -> list[tuple[int, int]]:
    clock = {"us": START_US}
    store = SqliteState(path, lambda: clock["us"] / 1e6)

    async def run() -> list[tuple[int, int]]:
        out = []
        for at, images in seq:
            clock["us"] = START_US + at
            reply = await store.limit([f"t:{tenant.name}:rate", f"t:{tenant.name}:day"], limit_args(tenant, images))
            out.append((reply[0], reply[1]))
        await store.aclose()
        return out

    return asyncio.run(run())


@pytest.mark.parametrize("tenant", TENANTS, ids=lambda t: t.name)
def test_the_pure_step_the_sqlite_store_and_a_local_count_decide_alike(tenant: Tenant, tmp_path: Path) -> None:
    for seed in range(3):
        seq = sequence(tenant, seed)
        expected = pure(tenant, seq)
        assert {a for a, _ in expected} == {0, 1}, "the sequence both admits and refuses"
        assert local(tenant, seq) == expected, f"seed {seed}: the float count differs"
        assert sqlite(tenant, seq, tmp_path / f"{tenant.name}-{seed}.db") == expected, f"seed {seed}"


def test_a_rate_of_2000_per_second_or_more_still_limits() -> None:
    """In milliseconds 1000/2000 rounded to 0: every request passed. In µs: 500."""
    tenant = Tenant("t", (), requests_per_s=2000, burst=1)
    assert limit_args(tenant, 1)[:2] == [500, 500]
    tat, allowed = 0, 0
    for _ in range(100):  # 100 at one instant: the one burst slot
        result = step(tat, 0, START_US, limit_args(tenant, 1))
        tat = result.tat_us if result.tat_us is not None else tat
        allowed += result.reply[0]
    assert allowed == 1
    huge = Tenant("t", (), requests_per_s=5e6, burst=1)
    assert limit_args(huge, 1)[0] == 1, "above 1,000,000/s: held to 1/µs, never 0 (no limit)"
