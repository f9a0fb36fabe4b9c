"""``GET /admin/usage``: the usage ledger (router/billing/ledger.py) by day x tenant x
route x model, as JSON or CSV, summing exactly to the answers' ``usage.cost``.

``from`` / ``to`` are ``YYYY-MM-DD`` (UTC; default today, at most 400 days);
``format=csv`` answers ``text/csv``. 404 ``not_found`` without a ``billing`` block.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time

from starlette.requests import Request
from starlette.responses import Response

from router.billing import ledger
from router.errors import InvalidRequest, NotFound, StoreUnavailable
from router.http.admin_api import check_admin
from router.http.common import FastJSONResponse, gateway_of

__all__ = ["admin_usage"]

MAX_DAYS = 400
COLUMNS = ("day", "tenant", "route", "model", "images", "cached_images", "compute_s", "cost")


def _day(value: str | None, name: str) -> dt.date:
    if value is None:
        return dt.datetime.fromtimestamp(time.time(), dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: expected YYYY-MM-DD", field=name) from None


async def admin_usage(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    table = gateway.table
    if table.billing is None:
        raise NotFound("no billing block in routes.yaml: nothing is priced")
    start, end = _day(request.query_params.get("from"), "from"), _day(request.query_params.get("to"), "to")
    if not 0 <= (end - start).days < MAX_DAYS:
        raise InvalidRequest(f"from..to must be in order and within {MAX_DAYS} days", field="to")
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format: json or csv", field="format")
    store = gateway.state_store
    tenants = [t.name for t in table.tenants] + [ledger.ANONYMOUS]
    rows = []
    day = start
    while day <= end:
        for tenant in tenants:
            counts = await store.read_counts(ledger.key(day.strftime("%Y%m%d"), tenant)) if store else None
            if counts is None:
                raise StoreUnavailable("the state store did not answer: usage cannot be read now")
            rows.extend(ledger.rows(day.strftime("%Y%m%d"), tenant, counts))
        day += dt.timedelta(days=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return Response(out.getvalue(), media_type="text/csv")
    return FastJSONResponse({"currency": table.billing.currency, "rows": rows})
