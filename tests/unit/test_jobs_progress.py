"""Progress estimates, the per-tenant ``max_running`` in the scheduler's choice and in
the claim (SQLite, two connections standing for two replicas), and its config."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from image_router.config import compile_text, load_file
from image_router.config.table import JobsConfig, JobTier
from image_router.errors import ConfigError
from image_router.jobs.model import Job, new_id
from image_router.jobs.schedule import pick, run_estimate, wait_estimate
from image_router.jobs.store import JobStore
from image_router.state import GuardedState, SqliteState


def job(tenant: str = "acme", at: float = 100.0, **changes: object) -> Job:
    made = Job(
        id=new_id(at, os.urandom(10)), tenant=tenant, tier="draft", route="default",
        request={"prompt": "p", "n": 1, "seeds": [1]}, created_at=at, deadline_at=at + 3600,
        expires_at=at + 86400, fingerprint="f1",
    )  # fmt: skip
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


# -- estimates (pure) -------------------------------------------------------------------


def test_a_running_job_s_share_grows_with_its_time_and_stops_short_of_done() -> None:
    """Share = elapsed / expected, seconds left = the rest; past the expected time the
    share holds at 0.95 and the rest at 5 % of the expected time (never 0, never done)."""
    assert run_estimate(0.0, 10.0) == (0.0, 10.0)
    done, left = run_estimate(4.0, 10.0)
    assert done == pytest.approx(0.4) and left == pytest.approx(6.0)
    later, less = run_estimate(7.0, 10.0)
    assert later > done and less < left
    assert run_estimate(30.0, 10.0) == pytest.approx((0.95, 0.5)), "an overrun says nothing of when it ends"
    assert run_estimate(-1.0, 10.0)[0] == 0.0, "a clock a little behind the claimer's"


def test_a_queued_job_s_wait_plays_the_tier_s_places_forward() -> None:
    """Next in line on a free tier: 0. Behind one running job: what that job has left,
    shrinking as it runs. Each job ahead adds a service time per place; more places
    divide it; with more running than places, a place frees only as the excess ends."""
    assert wait_estimate(1, [], 1, 4.0) == 0.0
    assert wait_estimate(1, [1.0], 1, 4.0) == pytest.approx(3.0)
    assert wait_estimate(1, [2.5], 1, 4.0) == pytest.approx(1.5), "shrinks as the running job runs"
    assert wait_estimate(3, [1.0], 1, 4.0) == pytest.approx(3.0 + 8.0), "two jobs ahead of it, then its turn"
    assert wait_estimate(3, [1.0], 2, 4.0) == pytest.approx(4.0), "two places: the second free one after 1 job"
    assert wait_estimate(1, [1.0, 2.0, 3.0], 2, 4.0) == pytest.approx(2.0), "3 running on 2 places: the 2nd to end"
    assert wait_estimate(1, [9.0], 1, 4.0) == pytest.approx(0.2), "an overrunning job still holds its place"


# -- the scheduler's choice with tenant caps (pure) -------------------------------------


def test_pick_passes_over_a_tenant_at_its_cap_even_when_urgent() -> None:
    """The fair order's head belongs to a capped tenant: the next tenant's job starts;
    an urgent job of a capped tenant waits too; all capped: nothing starts."""
    heavy = job("heavy", tag=1.0)
    urgent = job("heavy", tag=5.0, deadline_at=105.0)
    light = job("light", tag=2.0)
    assert pick([heavy, light], 100.0, 1.0, 1.0) == (heavy, "fair")
    assert pick([heavy, light], 100.0, 1.0, 1.0, frozenset({"heavy"})) == (light, "fair")
    assert pick([urgent, light], 100.0, 1.0, 10.0) == (urgent, "urgent")
    assert pick([urgent, light], 100.0, 1.0, 10.0, frozenset({"heavy"})) == (light, "fair")
    assert pick([heavy, urgent], 100.0, 1.0, 10.0, frozenset({"heavy"})) is None


# -- the cap in the claim (real SQLite, two replicas) -----------------------------------

CONFIG = JobsConfig(lease_s=30, max_running_per_tenant=2, tenant_max_running={"acme": 1},
                    tiers={"draft": JobTier(max_running=5), "noop": JobTier(max_running=5)})  # fmt: skip


def test_a_tenant_s_running_cap_holds_over_replicas_and_tiers(tmp_path: Path) -> None:
    """acme (max_running 1): of its jobs claimed at once by two replicas, one runs —
    on another tier too; beta's job runs beside it; acme's next starts once its first
    ends (finished or handed back). beta (the default, 2) runs two, not three;
    ``capped`` names who is at the cap; the anonymous open-mode tenant has none."""

    async def run() -> None:
        a, b = (JobStore(GuardedState(SqliteState(tmp_path / "state.db"), 1.0), CONFIG) for _ in range(2))
        try:
            made = [(await a.submit(job("acme", at=100 + i, tier=t), None)).job for i, t in enumerate("dd")]
            made.append((await a.submit(job("acme", at=102, tier="noop"), None)).job)
            got = await asyncio.gather(a.claim(made[0], "A", 200.0), b.claim(made[1], "B", 200.0))
            assert sum(g is not None for g in got) == 1, "one of acme's jobs runs, on any replica"
            first = next(g for g in got if g is not None)
            assert await a.claim(made[2], "A", 200.5) is None, "its cap holds across tiers"
            assert await a.capped(made) == frozenset({"acme"})
            betas = [(await b.submit(job("beta", at=110 + i), None)).job for i in range(3)]
            assert await a.capped(betas) == frozenset()
            assert [await b.claim(j, "B", 201.0) is not None for j in betas] == [True, True, False], "default 2"
            assert await a.capped([*made, *betas]) == frozenset({"acme", "beta"})
            owner = "A" if first.id == made[0].id else "B"
            store = a if owner == "A" else b
            assert await store.finish(first, owner, first.finished("completed", 202.0, images=0), [], 60) is not None
            assert await a.capped(made) == frozenset(), "its place is free once its job ends"
            waiting = made[1] if first.id == made[0].id else made[0]
            second = await b.claim(waiting, "B", 203.0)
            assert second is not None
            assert await b.hand_back(second.id, "B", 204.0), "handed back frees it too"
            assert await a.claim(made[2], "A", 205.0) is not None
            assert CONFIG.running_cap("") is None and CONFIG.running_cap("other") == 2
        finally:
            await a.state.aclose()
            await b.state.aclose()

    asyncio.run(run())


# -- config ------------------------------------------------------------------------------

ROUTES = """
models: {noop: {backend: triton}}
backends: {triton: {url: "http://t:8000"}}
default_route: noop
jobs:
  max_running_per_tenant: 3
tenants:
  mode: keys
  tenants:
    acme:
      keys: [sk-acme-0123456789abcd]
      jobs: {max_running: 1}
    beta: {keys: [sk-beta-0123456789abcd]}
"""


def test_tenant_max_running_from_routes_yaml_and_its_errors_at_their_lines(tmp_path: Path) -> None:
    """``tenants.*.jobs.max_running`` overrides ``jobs.max_running_per_tenant``; 0 is an
    error at its line (in routes.yaml or the tenants file); tenant job limits without a
    ``jobs:`` block are an error at the tenant's ``jobs`` line."""
    jobs = compile_text(ROUTES).jobs
    assert jobs is not None and jobs.running_cap("acme") == 1 and jobs.running_cap("beta") == 3
    defaults = compile_text(ROUTES.replace("jobs:\n  max_running_per_tenant: 3\n", "jobs: {}\n")).jobs
    assert defaults is not None and defaults.running_cap("beta") == 2 and defaults.running_cap("acme") == 1
    with pytest.raises(ConfigError) as zero:
        compile_text(ROUTES.replace("{max_running: 1}", "{max_running: 0}"))
    assert "routes.yaml:12" in str(zero.value) and "max_running" in str(zero.value), str(zero.value)
    with pytest.raises(ConfigError) as orphan:
        compile_text(ROUTES.replace("jobs:\n  max_running_per_tenant: 3\n", ""))
    assert "routes.yaml:10" in str(orphan.value) and "need a jobs: block" in str(orphan.value), str(orphan.value)
    (tmp_path / "routes.yaml").write_text(ROUTES.split("tenants:")[0] + "tenants: {file: tenants.yaml}\n")
    (tmp_path / "tenants.yaml").write_text("mode: keys\ntenants:\n  acme:\n    keys: [sk-acme-0123456789abcd]\n"
                                           "    jobs: {max_running: -1}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"tenants\.yaml:5"):
        load_file(tmp_path / "routes.yaml")
