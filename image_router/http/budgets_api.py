"""``/admin/budgets``: the tenants' spend budgets for an operator (the admin token, like
the rest of the admin API; ``router budgets`` is its command line). Without a
``billing`` block they answer ``404 not_found``.

- ``GET /admin/budgets``: every budgeted tenant's windows now — limit, spent, reserved
  (held by requests in flight), remaining, used share, resets_at and state (``ok``,
  ``warn``, ``brownout``, ``exhausted``) — read from the state store, so the same on
  every replica; and the budget decisions *this* replica made since it started.
- ``GET /admin/budgets/{tenant}``: one tenant's (404 for a tenant without a budget).
- ``POST /admin/budgets/{tenant}/credit`` ``{"amount": 25, "window": "day", "note":
  "…"}``: lowers the window's ``spent`` by ``amount`` (never below zero), in one atomic
  settlement in the store (:func:`image_router.billing.accounts.credit`); without ``window``,
  every window of the tenant. A credit of an exhausted tenant lets it generate again at
  once, on every replica. Audited; the answer says what was credited and the windows
  after.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from image_router.billing.accounts import credit, money, windows_of
from image_router.billing.price import micros
from image_router.config.billing import per_seconds
from image_router.config.table import Tenant
from image_router.errors import InvalidRequest, NotFound, StoreUnavailable
from image_router.gateway import Gateway
from image_router.http.admin_api import audit, check_admin
from image_router.http.common import gateway_of, parse_json_model, read_body
from image_router.http.usage_api import billing_of

__all__ = ["ROUTES"]


class CreditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(gt=0, le=1e9)  # in the billing currency
    window: str | None = Field(default=None, pattern=r"^(day|week|month|[0-9]+[smhd])$")
    note: str | None = Field(default=None, max_length=500)


def _budgeted(gateway: Gateway, name: str) -> Tenant:
    tenant = next((t for t in gateway.table.tenants if t.name == name), None)
    if tenant is None or tenant.budget is None:
        raise NotFound(f"no tenant {name!r} with a budget in routes.yaml")
    return tenant


async def _view(gateway: Gateway, tenant: Tenant) -> dict[str, Any]:
    """``tenant``'s windows read now (kept for the metrics and the status page too)."""
    assert tenant.budget is not None
    store = gateway.state_store
    wins = await windows_of(store, tenant.name, tenant.budget, time.time()) if store is not None else None
    if wins is None:
        raise StoreUnavailable("the state store did not answer: budgets cannot be read now")
    gateway.budgets.census.note(tenant.name, wins)
    decided = gateway.budgets.tally.decisions_of(tenant.name)
    return {"tenant": tenant.name, "windows": [w.body() for w in wins], "decisions_here": decided}


async def budgets_list(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    billing = billing_of(gateway)
    tenants = [await _view(gateway, t) for t in gateway.table.tenants if t.budget is not None]
    return JSONResponse({"currency": billing.currency, "tenants": tenants})


async def budgets_show(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    billing = billing_of(gateway)
    view = await _view(gateway, _budgeted(gateway, request.path_params["tenant"]))
    return JSONResponse({"currency": billing.currency, **view})


async def budgets_credit(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    billing = billing_of(gateway)
    tenant = _budgeted(gateway, request.path_params["tenant"])
    assert tenant.budget is not None
    body = parse_json_model(await read_body(request, 4096), CreditRequest, request.headers.get("content-type"))
    per = per_seconds(body.window) if body.window is not None else None
    pers = [limit.per for limit in tenant.budget.limits]
    if per is not None and per not in pers:
        raise InvalidRequest(f"window: tenant {tenant.name!r} has the windows {', '.join(pers)}", field="window")
    store = gateway.state_store
    if store is None:
        raise StoreUnavailable("no state store: nothing to credit")
    done = await credit(store, tenant.name, tenant.budget, per, micros(body.amount), time.time())
    credited = [{"per": c.per, "credited": money(c.amount), "spent_before": money(c.spent_before)} for c in done]
    audit(request, "budget credit", tenant=tenant.name, amount=body.amount, window=per, note=body.note,
          credited=credited)  # fmt: skip
    view = await _view(gateway, tenant)
    return JSONResponse({"currency": billing.currency, "credited": credited, **view})


ROUTES = [
    Route("/admin/budgets", budgets_list, methods=["GET"]),
    Route("/admin/budgets/{tenant}", budgets_show, methods=["GET"]),
    Route("/admin/budgets/{tenant}/credit", budgets_credit, methods=["POST"]),
]
