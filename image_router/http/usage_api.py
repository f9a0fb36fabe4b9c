"""What was spent, from the usage ledger (image_router/billing/ledger.py) by day x tenant x
route x model, as JSON or CSV, summing exactly to the answers' ``usage.cost``.

- ``GET /admin/usage`` (admin token): every tenant's rows.
- ``GET /v1/usage`` (the tenant's own key): its own rows only, and its budget's windows
  now (limit, spent, reserved, remaining, resets_at, state). In open mode a request
  without a key reads ``_anonymous``, as everything else in open mode is open.

``from`` / ``to`` are ``YYYY-MM-DD`` (UTC; default today, at most 400 days);
``group_by`` is any of ``day,tenant,route,model`` (comma-separated; default all four,
one row per day x tenant x route x model; empty: one row, the total): rows are summed
over the others, exactly (:func:`image_router.billing.ledger.grouped`); ``format=csv`` answers
``text/csv`` (the rows only, their columns those grouped by and the sums). A bad date,
range, ``group_by`` or ``format`` is a 400 ``invalid_request`` naming it (``param``). 404 ``not_found`` without a
``billing`` block; 503 ``store_unavailable`` when the state store does not answer.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from image_router.billing import ledger
from image_router.billing.accounts import usage_rows, windows_of
from image_router.billing.spec import Billing
from image_router.errors import InvalidRequest, NotFound, StoreUnavailable
from image_router.gateway import Gateway
from image_router.http.admin_api import check_admin
from image_router.http.common import FastJSONResponse, gateway_of, tenant_of

__all__ = ["admin_usage", "tenant_usage"]

MAX_DAYS = 400
SUMS = ("images", "cached_images", "compute_s", "cost")


def _day(value: str | None, name: str) -> dt.date:
    if value is None:
        return dt.datetime.fromtimestamp(time.time(), dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: expected YYYY-MM-DD", field=name) from None


def billing_of(gateway: Gateway) -> Billing:
    billing = gateway.table.billing
    if billing is None:
        raise NotFound("no billing block in routes.yaml: nothing is priced")
    return billing


def unavailable() -> StoreUnavailable:
    return StoreUnavailable("the state store did not answer: usage cannot be read now")


def _group_by(value: str | None) -> tuple[str, ...]:
    """The keys rows are grouped by, in the rows' order (``None``: all of them)."""
    if value is None:
        return ledger.GROUPS
    asked = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    wrong = [name for name in asked if name not in ledger.GROUPS]
    if wrong:
        raise InvalidRequest(
            f"group_by: {', '.join(map(repr, wrong))} is not one of {', '.join(ledger.GROUPS)}", field="group_by"
        )
    return tuple(name for name in ledger.GROUPS if name in asked)


async def _rows(
    request: Request, gateway: Gateway, tenants: list[str]
) -> tuple[list[dict[str, Any]], str, tuple[str, ...]]:
    """The ledger's rows of ``tenants`` over the query's days, grouped as asked; the
    format asked, and the keys grouped by. The query is checked before the store is read."""
    query = request.query_params
    start, end = _day(query.get("from"), "from"), _day(query.get("to"), "to")
    if not 0 <= (end - start).days < MAX_DAYS:
        raise InvalidRequest(f"from..to must be in order and within {MAX_DAYS} days", field="to")
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format: json or csv", field="format")
    by = _group_by(query.get("group_by"))
    store = gateway.state_store
    rows = await usage_rows(store, tenants, start, end) if store is not None else None
    if rows is None:
        raise unavailable()
    return (rows if by == ledger.GROUPS else ledger.grouped(rows, by)), fmt, by


def _csv(rows: list[dict[str, Any]], by: tuple[str, ...]) -> Response:
    out = io.StringIO()
    columns = [k for k in ledger.GROUPS if k in by] + list(SUMS)
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv")


async def admin_usage(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    billing = billing_of(gateway)
    rows, fmt, by = await _rows(request, gateway, [t.name for t in gateway.table.tenants] + [ledger.ANONYMOUS])
    if fmt == "csv":
        return _csv(rows, by)
    return FastJSONResponse({"currency": billing.currency, "group_by": list(by), "rows": rows})


async def tenant_usage(request: Request) -> Response:
    """The caller's own usage and budget: a key names one tenant, so nobody reads
    another's (in keys mode a missing or unknown key is a 401 before anything is read)."""
    tenant = tenant_of(request)
    gateway = gateway_of(request)
    billing = billing_of(gateway)
    name = tenant.name if tenant is not None else ledger.ANONYMOUS
    rows, fmt, by = await _rows(request, gateway, [name])
    if fmt == "csv":
        return _csv(rows, by)
    windows = None
    if tenant is not None and tenant.budget is not None:
        store = gateway.state_store
        wins = await windows_of(store, name, tenant.budget, time.time()) if store is not None else None
        if wins is None:
            raise unavailable()
        windows = [w.body() for w in wins]
    return FastJSONResponse(
        {"object": "usage", "tenant": name, "currency": billing.currency, "rows": rows, "budget": windows}
    )
