"""``GET /admin/usage?group_by=…`` through a real gateway (a hosted tier on the fake
upstream process, SQLite state): every subset of day, tenant, route and model sums to
exactly the ungrouped total; CSV has the grouped columns; a bad ``group_by`` or date is a
400 ``invalid_request`` naming its ``param``. Yesterday's ledger lines are written into
the state file before the gateway starts, so there are two days to group."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from image_router.billing import ledger
from image_router.billing.price import Cost
from image_router.billing.usage import Usage
from image_router.state import SqliteState
from tests.procs import GatewayProcess, HostedUpstream

pytestmark = pytest.mark.integration

KEYS = {name: f"{name}-0123456789abcdef" for name in ("acme", "zeta")}
ROUTES = f"""
backends:
  hosted: {{type: openai, base_url: "${{HOSTED_URL}}", api_key: "sk-test"}}
billing: {{currency: USD}}
models:
  fast: {{backend: hosted, remote_model: img-1, latency_hint_ms: 100, price: {{per_image: 0.002}}}}
  fine: {{backend: hosted, remote_model: img-2, latency_hint_ms: 100, price: {{per_image: 0.0303}}}}
routes:
  - {{name: sketch, match: {{model: sketch}}, model: fast}}
default_route: {{name: default, model: fine, budget_ms: 5000}}
tenants:
  mode: keys
  tenants:
    acme: {{keys: ["{KEYS["acme"]}"]}}
    zeta: {{keys: ["{KEYS["zeta"]}"]}}
env: [HOSTED_URL]
"""
TOTALS = ("images", "cached_images", "cost_micros")


def _yesterday_lines(state: Path) -> None:
    """Yesterday: acme 2 images on default|fine ($0.0606), zeta 1 on sketch|fast."""

    async def write() -> None:
        store = SqliteState(state)
        day = ledger.day_of(time.time() - 86400)
        for tenant, route, model, images, micros in (
            ("acme", "default", "fine", 2, 60_600),
            ("zeta", "sketch", "fast", 1, 2_000),
        ):
            usage = Usage(images, 0, 0, "none", Cost(per_image=micros), "USD")
            await store.add_counts(ledger.key(day, tenant), ledger.fields(route, model, usage), ledger.KEEP_S)
        await store.aclose()

    asyncio.run(write())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("usage-groups")
    (directory / "state").mkdir()
    _yesterday_lines(directory / "state" / "state.db")
    upstream = HostedUpstream(directory)
    routes = directory / "routes.yaml"
    routes.write_text(ROUTES)
    gateway = GatewayProcess(routes, "http://127.0.0.1:9", directory / "gateway.log", env={"HOSTED_URL": upstream.url})
    try:
        for tenant, model, n in (
            ("acme", "auto", 2),
            ("acme", "sketch", 1),
            ("zeta", "auto", 1),
            ("zeta", "sketch", 3),
        ):
            r = httpx.post(
                gateway.url + "/v1/images/generations",
                json={"model": model, "prompt": f"{tenant} {model}", "n": n, "size": "32x32"},
                headers={"Authorization": f"Bearer {KEYS[tenant]}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        yield gateway
    finally:
        gateway.stop()
        upstream.stop()


def usage(gw: GatewayProcess, **query: str) -> httpx.Response:
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    return httpx.get(gw.url + "/admin/usage", params={"from": yesterday, **query}, headers=gw.admin, timeout=30)


def totals(rows: list[dict[str, object]]) -> tuple[int, ...]:
    return tuple(sum(int(r[k]) for r in rows) for k in TOTALS)  # type: ignore[call-overload]


def test_every_grouping_sums_to_the_ungrouped_total(gw: GatewayProcess) -> None:
    """3 + 4 images today over 2 tenants x 2 routes, 3 yesterday: each of the 16 subsets
    of day, tenant, route, model has as many rows as distinct values and the same sums."""
    deadline = time.monotonic() + 10
    while totals(full := usage(gw).json()["rows"])[0] < 10 and time.monotonic() < deadline:
        time.sleep(0.1)  # the ledger lines are written off the request path
    expected = totals(full)
    assert expected == (10, 0, 60_600 + 2_000 + 3 * 30_300 + 4 * 2_000), full
    compute_ms = round(sum(r["compute_s"] for r in full) * 1000)
    for size in range(5):
        for keys in itertools.combinations(ledger.GROUPS, size):
            answer = usage(gw, group_by=",".join(reversed(keys)))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            rows = body["rows"]
            assert body["group_by"] == list(keys)
            assert totals(rows) == expected, (keys, rows)
            assert round(sum(r["compute_s"] for r in rows) * 1000) == compute_ms
            assert len(rows) == len({tuple(r[k] for k in keys) for r in full}), (keys, rows)
            assert all(set(r) == {*keys, "images", "cached_images", "compute_s", "cost", "cost_micros"} for r in rows)
    by_model = {r["model"]: r["cost_micros"] for r in usage(gw, group_by="model").json()["rows"]}
    assert by_model == {"fine": 60_600 + 3 * 30_300, "fast": 2_000 + 4 * 2_000}


def test_csv_has_the_grouped_columns(gw: GatewayProcess) -> None:
    answer = usage(gw, group_by="tenant,model", format="csv")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(rows[0]) == ["tenant", "model", "images", "cached_images", "compute_s", "cost"]
    assert [(r["tenant"], r["model"]) for r in rows] == [
        ("acme", "fast"),
        ("acme", "fine"),
        ("zeta", "fast"),
        ("zeta", "fine"),
    ]
    assert sum(int(r["images"]) for r in rows) == 10


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"group_by": "tenant,colour"}, "group_by"),
        ({"group_by": "Tenant"}, "group_by"),
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-12-06", "to": "2026-12-01"}, "to"),
        ({"format": "xml"}, "format"),
    ],
)
def test_a_bad_query_is_a_400_naming_its_param(gw: GatewayProcess, query: dict[str, str], param: str) -> None:
    answer = httpx.get(gw.url + "/admin/usage", params=query, headers=gw.admin, timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param), error
