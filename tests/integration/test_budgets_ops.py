"""Operating spend budgets against real processes (a gateway with a ``billing:`` block on
the session's Triton, SQLite state): a tenant's own ``GET /v1/usage``, the spend and
budget metrics, ``/admin/budgets`` and its credit, ``router budgets``, and the status
page's Spend card.

Prices are per image only and ``quote_margin`` is 1, so every figure is exact whether
or not a settlement has landed yet. Each test has a tenant of its own on one gateway."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from image_router.cli import main
from image_router.triton import TritonServer
from tests.integration.test_status_page import signed_in
from tests.procs import ADMIN_TOKEN, GatewayProcess, scrape

pytestmark = pytest.mark.integration

KEYS = {name: f"{name}-0123456789abcdef" for name in ("acme", "other", "tiny", "cli", "page")}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


ROUTES = f"""
backends:
  triton: {{url: "${{TRITON_URL}}"}}
billing: {{currency: USD, gpu_hour_price: 0, quote_margin: 1.0}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150, price: {{per_image: 0.01}}}}
  noop: {{backend: triton, triton_model: noop, latency_hint_ms: 20, price: {{per_image: 0.001}}}}
default_route: {{name: default, model: draft, fallback: [noop], budget_ms: 30000}}
tenants:
  mode: keys
  tenants:
    acme:
      keys: ["{KEYS["acme"]}"]
      budget: {{limits: [{{per: day, amount: 0.05}}], warn_at: 0.3, downgrade_at: 0.5, downgrade_to: [noop]}}
    other:
      keys: ["{KEYS["other"]}"]
    tiny:
      keys: ["{KEYS["tiny"]}"]
      budget: {{limits: [{{per: day, amount: 0.01}}, {{per: month, amount: 1}}]}}
    cli:
      keys: ["{KEYS["cli"]}"]
      budget: {{limits: [{{per: day, amount: 0.01}}]}}
    page:
      keys: ["{KEYS["page"]}"]
      budget: {{limits: [{{per: day, amount: 0.012}}], warn_at: 0.5}}
"""


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("budgets-ops")
    path = directory / "routes.yaml"
    path.write_text(ROUTES)
    gateway = GatewayProcess(path, triton.http_url, directory / "gateway.log")
    yield gateway
    gateway.stop()


def generate(gw: GatewayProcess, tenant: str, prompt: str) -> httpx.Response:
    return httpx.post(gw.url + "/api/v1/generate", json={"prompt": prompt, "response": "json"}, headers=auth(tenant),
                      timeout=60)  # fmt: skip


def until(what: Callable[[], Any], timeout_s: float = 15, every_s: float = 0.1) -> Any:
    """``what()`` once it is truthy; its last value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (got := what()) and time.monotonic() < deadline:
        time.sleep(every_s)
    return got


def usage(gw: GatewayProcess, tenant: str) -> dict[str, Any]:
    answer = httpx.get(gw.url + "/v1/usage", headers=auth(tenant), timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def budget(gw: GatewayProcess, tenant: str) -> dict[str, Any]:
    answer = httpx.get(f"{gw.url}/admin/budgets/{tenant}", headers=gw.admin, timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def settled(gw: GatewayProcess, tenant: str) -> dict[str, Any]:
    """The tenant's budget once nothing is held (settling is off the request path)."""

    def unheld() -> dict[str, Any] | None:
        got = budget(gw, tenant)
        return None if any(w["reserved"] for w in got["windows"]) else got

    body: dict[str, Any] | None = until(unheld)
    assert body is not None, budget(gw, tenant)
    return body


def exhaust(gw: GatewayProcess, tenant: str) -> None:
    """One draft spends the tenant's $0.01 day: the next request is refused."""
    assert generate(gw, tenant, f"{tenant} spends it all").status_code == 200
    refused = generate(gw, tenant, f"{tenant} wants more")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota", refused.text
    settled(gw, tenant)


def tomorrow() -> int:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today + dt.timedelta(days=1)).timestamp())


def test_a_tenants_spend_moves_its_usage_and_the_metrics(gw: GatewayProcess) -> None:
    """acme ($0.05/day, warn_at 0.3, downgrade_at 0.5): draft at 0 % and 20 % (ok), at
    40 % (warn), noop at 60 % (brownout). ``GET /v1/usage`` answers acme's own rows —
    3 drafts and a noop, costs summing to the answers' — and its window (spent,
    remaining, resets at the next UTC midnight); another tenant's key sees none of it,
    no key is a 401. The metrics count the same spend, images and decisions, and the
    budget gauges reach the store's figures."""
    assert httpx.get(gw.url + "/v1/usage", timeout=10).status_code == 401
    costs = []
    for i in range(4):
        answer = generate(gw, "acme", f"an acme fox {i}")
        assert answer.status_code == 200, answer.text
        costs.append(answer.json()["usage"]["cost"])
    assert costs == [0.01, 0.01, 0.01, 0.001]
    got = until(lambda: (u := usage(gw, "acme"))["rows"] and sum(r["images"] for r in u["rows"]) == 4 and u)
    assert got, usage(gw, "acme")
    assert got["tenant"] == "acme" and got["currency"] == "USD"
    assert [(r["route"], r["model"], r["images"], r["cost_micros"]) for r in got["rows"]] == [
        ("default", "draft", 3, 30_000),
        ("default", "noop", 1, 1_000),
    ]
    (window,) = got["budget"]
    assert (window["per"], window["limit"], window["resets_at"]) == ("day", 0.05, tomorrow())
    assert window["spent"] + window["reserved"] == pytest.approx(0.031) and window["remaining"] == pytest.approx(0.019)
    assert window["state"] == "brownout", "0.031 of 0.05 is past downgrade_at 0.5"
    other = usage(gw, "other")
    assert other["tenant"] == "other" and other["rows"] == [] and other["budget"] is None

    labels = (("currency", "USD"), ("model", "draft"), ("route", "default"), ("tenant", "acme"))
    metrics = scrape(gw)
    assert metrics[("router_cost_total", labels)] == pytest.approx(0.03)
    assert metrics[("router_images_total", (("cache", "miss"), *labels[1:]))] == 3
    decided = {dict(k[1])["decision"]: v for k, v in metrics.items()
               if k[0] == "router_budget_decisions_total" and dict(k[1])["tenant"] == "acme"}  # fmt: skip
    assert decided == {"ok": 2, "warn": 1, "brownout": 1}, decided
    gauge = ("router_budget_spent", (("per", "day"), ("tenant", "acme")))
    assert until(lambda: scrape(gw).get(gauge) == pytest.approx(0.031)), scrape(gw).get(gauge)
    assert scrape(gw)[("router_budget_remaining", gauge[1])] == pytest.approx(0.019)


def test_admin_lists_budgets_and_a_credit_lets_an_exhausted_tenant_generate_again(gw: GatewayProcess) -> None:
    """tiny ($0.01/day, $1/month, reject) spends its day on one draft and is refused
    (an ``exhausted`` decision). ``/admin/budgets`` lists both windows (admin token
    only); a credit of $0.5 on the day window lowers its spent to 0 — never below —
    and leaves the month alone; tiny generates again, once, then is refused again. The
    credit is an audit line; a window it lacks is a 400, a tenant without a budget 404."""
    exhaust(gw, "tiny")
    assert httpx.get(gw.url + "/admin/budgets", timeout=10).status_code == 401
    assert httpx.post(gw.url + "/admin/budgets/tiny/credit", json={"amount": 1}, timeout=10).status_code == 401
    listed = httpx.get(gw.url + "/admin/budgets", headers=gw.admin, timeout=10).json()
    tiny = next(t for t in listed["tenants"] if t["tenant"] == "tiny")
    assert [(w["per"], w["limit"], w["spent"], w["remaining"], w["state"]) for w in tiny["windows"]] == [
        ("day", 0.01, 0.01, 0.0, "exhausted"),
        ("month", 1.0, 0.01, 0.99, "ok"),
    ]
    assert tiny["windows"][0]["resets_at"] == tomorrow()
    assert tiny["decisions_here"] == {"exhausted": 1, "ok": 1}
    assert {t["tenant"] for t in listed["tenants"]} == {"acme", "tiny", "cli", "page"}, "only budgeted tenants"

    wrong = httpx.post(gw.url + "/admin/budgets/tiny/credit", json={"amount": 1, "window": "week"}, headers=gw.admin)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "window", wrong.text
    assert httpx.get(gw.url + "/admin/budgets/other", headers=gw.admin).status_code == 404
    credited = httpx.post(
        gw.url + "/admin/budgets/tiny/credit", json={"amount": 0.5, "window": "day", "note": "refund"},
        headers=gw.admin, timeout=10,
    )  # fmt: skip
    assert credited.status_code == 200, credited.text
    body = credited.json()
    assert body["credited"] == [{"per": "day", "credited": 0.01, "spent_before": 0.01}]
    assert [(w["per"], w["spent"], w["state"]) for w in body["windows"]] == [("day", 0.0, "ok"), ("month", 0.01, "ok")]

    assert generate(gw, "tiny", "tiny again").status_code == 200
    refused = generate(gw, "tiny", "tiny once more")
    assert refused.status_code == 429, "the credit gave back what was spent, not more"
    audits = until(lambda: [json.loads(x) for x in gw.log.read_text().splitlines() if '"budget credit"' in x])
    assert audits and audits[0]["tenant"] == "tiny" and audits[0]["note"] == "refund", audits
    assert audits[0]["credited"] == body["credited"] and audits[0]["auth"] == "bearer"


def test_router_budgets_lists_shows_and_credits(
    gw: GatewayProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``router budgets list`` prints every window; ``credit cli 0.004 --window day``
    lowers cli's day from 0.01 to 0.006 and says so; ``show`` prints the window after;
    an unknown tenant is the API's error, printed as the other commands print it."""
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    exhaust(gw, "cli")
    assert main(["budgets", "list", "--url", gw.url]) == 0
    listed = capsys.readouterr().out.splitlines()
    line = next(x for x in listed if x.startswith("cli "))
    assert line.startswith(
        "cli  day    spent 0.010000 + held 0.000000 of 0.010000 USD (100%, exhausted)  0.000000 left"
    )
    assert main(["budgets", "credit", "cli", "0.004", "--window", "day", "--url", gw.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "credited cli 0.004000 USD on day (spent 0.010000 -> 0.006000)", out
    assert main(["budgets", "show", "cli", "--url", gw.url]) == 0
    assert "spent 0.006000 + held 0.000000 of 0.010000 USD (60%, ok)" in capsys.readouterr().out
    assert budget(gw, "cli")["windows"][0]["spent"] == 0.006
    with pytest.raises(SystemExit) as error:
        main(["budgets", "show", "nobody", "--url", gw.url])
    assert str(error.value) == "error: 404 no tenant 'nobody' with a budget in routes.yaml"


def test_the_status_page_shows_todays_spend_and_budgets_near_their_limit(gw: GatewayProcess, browser: Browser) -> None:
    """page ($0.012/day, warn_at 0.5) spends one draft: the Spend card lists page x draft
    at 0.0100 and page's day window as near its limit (83 %, warn); the numbers are the
    ledger's and the store's."""
    assert generate(gw, "page", "a page fox").status_code == 200
    view = signed_in(browser, gw)
    view.wait_for_selector("#spend tr[data-tenant='page'][data-model='draft']", timeout=20000)
    cells = [c.strip() for c in view.locator("#spend tr[data-tenant='page']").locator("td").all_text_contents()]
    assert cells == ["page", "draft", "1", "0.0100"]
    row = view.locator("#budgets tr[data-tenant='page'][data-per='day']")
    row.wait_for(timeout=20000)
    assert (row.locator(".used").text_content(), row.locator(".state").text_content()) == ("83%", "warn")
    assert "USD today" in (view.text_content("#spend-summary") or "")
