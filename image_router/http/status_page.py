"""The operator's status page at ``/admin/`` (same token as the admin API).

A browser cannot send a Bearer header when it navigates, so ``/admin/login`` takes the
token in a form and sets an HttpOnly, SameSite=Strict cookie holding a MAC of it. A
wrong token is audited and counts against the address (five in a minute: 429s). The
page is static HTML whose script polls ``/admin/status.json`` every two seconds:
routes and splits, live p50/p95/p99 and error rate per model, each canary beside its
baseline with a verdict, each rollout (its weight over time as a chart, its decisions
with the numbers they were made on, and a gallery of both arms' recent images, shadow
pairs side by side), recent downgrades, the async jobs (counts by state and per tier,
the oldest queued job's age, whether this replica drains — the job runner's last
census, never a store call per poll), with a ``billing`` block the spend (today's by
tenant and model from the usage ledger, the budget windows near their limit — the
billing census, read at most every few seconds, never per poll), and the active config
with its last reload. The verdict and the spend card are pure functions
(:func:`canary_verdict`, :func:`spend_card`).
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from image_router.errors import NotFound, RouterError
from image_router.gateway import Gateway
from image_router.http.admin_api import (
    SESSION_COOKIE,
    SESSION_S,
    admin_token,
    audit,
    check_admin,
    check_throttle,
    describe,
    session_value,
    sign_in_failed,
)
from image_router.http.common import gateway_of, read_body
from image_router.reload import RoutesReloader

__all__ = ["NEAR_LIMIT", "canary_verdict", "login", "login_form", "spend_card", "status_json", "status_page"]

PAGE = (Path(__file__).parent / "status.html").read_text(encoding="utf-8")
LOGIN = """<!doctype html><meta charset="utf-8"><title>image-router · sign in</title>
<style>body{font:15px system-ui;margin:4em auto;max-width:24em}input{font:inherit;width:100%;margin:.4em 0}</style>
<h1>image-router</h1><form method="post" action="/admin/login">
<label>Admin token <input type="password" name="token" autofocus></label>
<input type="submit" value="Sign in"></form>{error}"""


MIN_CANARY_ATTEMPTS = 20
NEAR_LIMIT = 0.8  # a window this full (or past its warn_at) is shown as near its limit


def canary_verdict(base: dict[str, float], canary: dict[str, float]) -> str:
    """``healthy`` unless the canary errs more (by over 1 point) or is slower (p95 above
    both 1.2x the baseline's and the baseline's + 10 ms); no verdict on few samples."""
    attempts = int(canary.get("attempts", 0))
    if attempts < MIN_CANARY_ATTEMPTS:
        return f"collecting ({attempts}/{MIN_CANARY_ATTEMPTS})"
    if canary.get("error_rate", 0.0) > base.get("error_rate", 0.0) + 0.01:
        return "degraded: more errors"
    base_p95 = base.get("p95_ms", 0.0)
    if base_p95 and canary.get("p95_ms", 0.0) > max(1.2 * base_p95, base_p95 + 10.0):
        return "degraded: slower"
    return "healthy"


def _canaries(table: dict[str, Any], latency: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    for route in table["routes"]:
        canaries = [a for a in route["arms"] if a["canary"]]
        bases = [a for a in route["arms"] if not a["canary"]]
        for arm in canaries:
            for base in bases[:1]:
                b, c = latency.get(base["model"], {}), latency.get(arm["model"], {})
                out.append(
                    {
                        "route": route["name"],
                        "baseline": {"model": base["model"], "weight": base["weight"], **b},
                        "canary": {"model": arm["model"], "weight": arm["weight"], **c},
                        "verdict": canary_verdict(b, c),
                    }
                )
    return out


def spend_card(billing: dict[str, Any]) -> dict[str, Any]:
    """The Spend card from :meth:`BudgetGate.describe`: today's spend per tenant x model
    (summed over routes), costliest first; the budget windows near their limit (state
    past ``ok``, or used at least :data:`NEAR_LIMIT`), fullest first."""
    today: dict[tuple[str, str], dict[str, Any]] = {}
    for row in billing["today"]:
        got = today.setdefault((row["tenant"], row["model"]), {"tenant": row["tenant"], "model": row["model"],
                                                               "images": 0, "cost_micros": 0})  # fmt: skip
        got["images"] += row["images"]
        got["cost_micros"] += row["cost_micros"]
    rows = sorted(today.values(), key=lambda r: (-r["cost_micros"], r["tenant"], r["model"]))
    near = [
        {"tenant": b["tenant"], **w}
        for b in billing["budgets"]
        for w in b["windows"]
        if w["state"] != "ok" or w["used"] >= NEAR_LIMIT
    ]
    return {
        "currency": billing["currency"],
        "read_at": billing["read_at"],
        "total": round(sum(r["cost_micros"] for r in rows) / 1e6, 6),
        "today": [{**r, "cost": round(r["cost_micros"] / 1e6, 6)} for r in rows],
        "near_limit": sorted(near, key=lambda w: -w["used"]),
        "budgets": len([w for b in billing["budgets"] for w in b["windows"]]),
    }


def _status(gateway: Gateway, reloader: RoutesReloader) -> dict[str, Any]:
    table = describe(gateway.table, gateway.rollouts.route_for)
    latency = gateway.latency()
    state = gateway.state()
    models = {
        name: {**latency.get(name, {}), **state["models"].get(name, {})} for name in sorted(set(gateway.table.models))
    }
    return {
        "config": reloader.status(),
        "routes": table["routes"],
        "models": models,
        "canaries": _canaries(table, latency),
        "recent_downgrades": gateway.recent_downgrades(20),
        "tenants": gateway.tenant_status(),
        "rollouts": gateway.rollouts.describe(),
        "backends": state["backends"],
    }


def _signed_in(request: Request) -> bool:
    try:
        check_admin(request)
    except NotFound:
        raise
    except RouterError:
        return False
    return True


async def status_page(request: Request) -> Response:
    if not _signed_in(request):
        return RedirectResponse("/admin/login", status_code=303)
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})


async def status_json(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    status = _status(gateway, request.app.state.reloader)
    cache = await gateway.cache_status()
    if cache is not None:
        status["cache"] = cache
    jobs = request.app.state.runtime.jobs.describe()
    if jobs is not None:
        status["jobs"] = jobs
    billing = gateway.budgets.describe(gateway.table)
    if billing is not None:
        status["spend"] = spend_card(billing)
    return JSONResponse(status)


async def login_form(request: Request) -> Response:
    admin_token(request)
    return HTMLResponse(LOGIN.replace("{error}", ""))


async def login(request: Request) -> Response:
    token = admin_token(request)
    check_throttle(request)  # a 429 before the comparison: guessing costs time
    body = (await read_body(request, 4096)).decode("utf-8", "replace")
    given = parse_qs(body).get("token", [""])[0]
    if not hmac.compare_digest(given.encode(), token.encode()):
        sign_in_failed(request, "form")
        return HTMLResponse(LOGIN.replace("{error}", "<p style=color:#b00>Wrong token.</p>"), status_code=401)
    response = RedirectResponse("/admin/", status_code=303)
    expires = int(time.time()) + SESSION_S
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"
    response.set_cookie(SESSION_COOKIE, session_value(token, expires), max_age=SESSION_S, httponly=True,
                        samesite="strict", path="/admin", secure=secure)  # fmt: skip
    audit(request, "sign-in")
    return response
