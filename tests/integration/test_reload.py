"""Hot reload of routes.yaml while traffic flows: file edits, SIGHUP, the admin API and
the kubelet's ConfigMap symlink swap. A bad file never replaces the running table."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from image_router.config import compile_text
from image_router.policy.split import choose_arm, sticky_key
from image_router.triton import TritonServer
from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration


def routes(model: str, canary_weight: int = 10, budget_ms: int = 3000) -> str:
    return (
        TIERS
        + f"""
routes:
  - name: canary
    match: {{intent: canary}}
    split:
      - {{model: noop, weight: {100 - canary_weight}}}
      - {{model: noop-canary, weight: {canary_weight}, canary: true}}
    sticky: header:X-User-Id
default_route:
  name: main
  model: {model}
  budget_ms: {budget_ms}
"""
    )


BROKEN = routes("noop").replace("budget_ms: 3000", "budget_ms: -3\n  bogus: 1")


def model_of(gw: GatewayProcess, **body: object) -> str:
    r = httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x", **body}, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-router-model"]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def config(gw: GatewayProcess) -> dict[str, object]:
    r = httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10)
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_reload_under_load_with_bad_file_in_between_loses_no_request(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(routes("noop"))
    path = gw.routes
    results: list[tuple[int, str]] = []

    async def load(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:

            async def worker() -> None:
                while not stop.is_set():
                    r = await client.post("/api/v1/generate", json={"prompt": "x", "response": "json"})
                    results.append((r.status_code, r.headers.get("x-router-model", "")))

            await asyncio.gather(*(worker() for _ in range(8)))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))
        await asyncio.sleep(0.5)
        path.write_text(BROKEN)  # invalid: must be rejected, noop keeps serving
        await asyncio.sleep(1.0)
        status = await asyncio.to_thread(config, gw)
        last = status["last_reload"]
        assert isinstance(last, dict) and last["ok"] is False
        assert any("budget_ms" in e and "routes.yaml:" in e for e in last["errors"])
        path.write_text(routes("draft"))  # valid: takes over
        await asyncio.sleep(1.5)
        stop.set()
        await task

    asyncio.run(scenario())
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} failed requests: {failed[:5]}"
    models = [m for _, m in results]
    assert "noop@1" in models and models[-1] == "draft@1"
    assert len(results) > 50
    assert config(gw)["last_reload"]["ok"] is True  # type: ignore[index]


def test_sighup_and_admin_reload_and_auth(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(routes("noop"), extra=["--no-watch"])
    gw.routes.write_text(routes("draft"))
    time.sleep(0.5)
    assert model_of(gw) == "noop@1", "--no-watch: the file alone does not reload"
    gw.signal(signal.SIGHUP)
    wait_for(lambda: model_of(gw) == "draft@1")

    gw.routes.write_text(BROKEN)
    r = httpx.post(gw.url + "/admin/reload", headers=gw.admin)
    assert r.status_code == 422 and r.json()["ok"] is False
    assert any(":" in e and "unknown key" in e for e in r.json()["errors"])
    assert model_of(gw) == "draft@1"

    gw.routes.write_text(routes("noop"))
    r = httpx.post(gw.url + "/admin/reload", headers=gw.admin)
    assert r.status_code == 200 and r.json()["changed"] is True
    assert model_of(gw) == "noop@1"
    active = config(gw)["active"]
    assert isinstance(active, dict) and active["digest"] == r.json()["digest"]

    assert httpx.post(gw.url + "/admin/reload").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(gw.url + "/admin/config", headers=wrong).json()["error"]["code"] == "unauthorized"
    for user in ("u1", "u2", "u3", "u4"):  # explain names the side that serving then uses
        explain = httpx.post(
            gw.url + "/admin/explain",
            headers=gw.admin,
            json={"prompt": "x", "intent": "canary", "headers": {"X-User-Id": user}},
        ).json()
        assert explain["route"] == "canary" and explain["chosen"] + "@1" == _side(gw, user), (user, explain)


def test_admin_is_disabled_without_a_token(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway(routes("noop"), env={"ROUTER_ADMIN_TOKEN": ""})
    for token in ("", "anything"):
        r = httpx.get(gw.url + "/admin/config", headers={"Authorization": f"Bearer {token}".strip()})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_an_editors_rename_into_place_is_reloaded(start_gateway: Callable[..., GatewayProcess]) -> None:
    """Editors (vim, most IDEs) save by writing a new file and renaming it over the old
    one: the watcher must follow the name, not the replaced inode."""
    gw = start_gateway(routes("noop"))
    assert model_of(gw) == "noop@1"
    for model in ("draft", "noop"):
        staged = gw.routes.with_name(".routes.yaml.swp")
        staged.write_text(routes(model))
        os.rename(staged, gw.routes)
        wait_for(lambda model=model: model_of(gw) == f"{model}@1")  # type: ignore[misc]


def test_configmap_symlink_swap_is_reloaded(triton: TritonServer, tmp_path: Path) -> None:
    """The kubelet's layout: routes.yaml -> ..data/routes.yaml, ..data -> ..<timestamp>/;
    an update points ..data at a new directory in one rename."""
    mount = tmp_path / "config"
    first = mount / "..2026_01_01_00_00_00.000000001"
    first.mkdir(parents=True)
    (first / "routes.yaml").write_text(routes("noop"))
    (mount / "..data").symlink_to(first.name)
    (mount / "routes.yaml").symlink_to("..data/routes.yaml")
    gw = GatewayProcess(mount / "routes.yaml", triton.http_url, tmp_path / "cm.log")
    try:
        assert model_of(gw) == "noop@1"
        second = mount / "..2026_01_01_00_01_00.000000002"
        second.mkdir()
        (second / "routes.yaml").write_text(routes("draft"))
        (mount / "..data_tmp").symlink_to(second.name)
        os.rename(mount / "..data_tmp", mount / "..data")
        wait_for(lambda: model_of(gw) == "draft@1")
    finally:
        gw.stop()


def test_canary_roll_forward_by_editing_routes_keeps_canary_users(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(routes("noop", canary_weight=10))
    users = [f"user-{i}" for i in range(80)]

    def sides() -> dict[str, str]:
        return {u: _side(gw, u) for u in users}

    def expected(weight: int) -> dict[str, str]:
        """Each user's side by the pure policy (sticky: no randomness): the gateway must
        agree with it user by user, not merely in the count."""
        route = compile_text(routes("noop", canary_weight=weight), env={"TRITON_URL": "http://x:1"}).route_named(
            "canary"
        )
        assert route is not None
        keys = {u: sticky_key(route, {"x-user-id": u}, {}, {}) for u in users}
        return {u: choose_arm(route, keys[u], random.Random(0)).arm.model + "@1" for u in users}

    def canary_users(side: dict[str, str]) -> set[str]:
        return {u for u, model in side.items() if model == "noop-canary@1"}

    before = sides()
    assert before == expected(10) and 2 <= len(canary_users(before)) <= 16  # ~10% of 80
    gw.routes.write_text(routes("noop", canary_weight=50))
    wait_for(lambda: _weights(gw) == [50.0, 50.0])
    forward = sides()
    assert forward == expected(50) and 28 <= len(canary_users(forward)) <= 52  # ~50%
    assert canary_users(before) <= canary_users(forward), "rolling forward moves users only to the canary"
    gw.routes.write_text(routes("noop", canary_weight=20))  # part way back
    wait_for(lambda: _weights(gw) == [80.0, 20.0])
    back = sides()
    assert back == expected(20) and canary_users(back) < canary_users(forward)
    assert canary_users(back) <= canary_users(forward), "lowering the weight moves only canary users back"
    gw.routes.write_text(routes("noop", canary_weight=0))  # roll back
    wait_for(lambda: _weights(gw) == [100.0, 0.0])
    assert all(_side(gw, u) == "noop@1" for u in users)


def _side(gw: GatewayProcess, user: str) -> str:
    r = httpx.post(
        gw.url + "/api/v1/generate", json={"prompt": "x", "intent": "canary"}, headers={"X-User-Id": user}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.headers["x-router-model"]


def _weights(gw: GatewayProcess) -> list[float]:
    table = config(gw)["table"]
    assert isinstance(table, dict)
    canary = next(r for r in table["routes"] if r["name"] == "canary")
    return [a["weight"] for a in canary["arms"]]


def test_requests_in_flight_finish_on_the_table_they_started_with(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """A ~2 s quality request started before a reload is answered as the old table said."""
    gw = start_gateway(routes("quality", budget_ms=20000))

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            slow = asyncio.create_task(client.post("/api/v1/generate", json={"prompt": "x"}))
            await asyncio.sleep(0.3)
            before = (await client.get("/admin/config", headers=gw.admin)).json()["active"]["digest"]
            gw.routes.write_text(routes("draft"))
            for _ in range(100):
                active = (await client.get("/admin/config", headers=gw.admin)).json()["active"]
                if active["digest"] != before:
                    break
                await asyncio.sleep(0.05)
            assert not slow.done(), "the reload must land while the slow request is in flight"
            return await slow

    old = asyncio.run(scenario())
    assert old.status_code == 200
    assert old.headers["x-router-model"] == "quality@1"
    assert model_of(gw) == "draft@1"
