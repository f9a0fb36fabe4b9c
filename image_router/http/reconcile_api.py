"""``GET /admin/billing/reconcile?window=1h`` (admin token): per backend x replica x Triton
model, Triton's compute against what this gateway billed and what it gave up on
(:mod:`image_router.billing.reconcile`; docs/billing.md). ``window`` is ``30s``, ``15m``,
``1h``, up to ``24h`` (default ``1h``); anything else is ``400 invalid_request`` naming
``window``. ``404 not_found`` without a ``billing`` block, as ``/admin/usage``.

The runtime's reconciler reads every :data:`~image_router.billing.reconcile.POLL_S` from the
process's start when a ``billing`` block is there (else from the first call, for a
block a reload added): a window reaches back at most to then.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from image_router.billing.reconcile import POLL_S, Reconciler, instances_of, window_seconds
from image_router.errors import InvalidRequest
from image_router.http.admin_api import check_admin
from image_router.http.common import FastJSONResponse, gateway_of
from image_router.http.usage_api import billing_of

__all__ = ["ROUTES", "admin_reconcile"]


def _reconciler(request: Request) -> Reconciler:
    reconciler: Reconciler = request.app.state.runtime.reconciler
    return reconciler


async def admin_reconcile(request: Request) -> Response:
    check_admin(request)
    gateway = gateway_of(request)
    billing_of(gateway)
    text = request.query_params.get("window", "1h")
    window_s = window_seconds(text)
    if window_s is None:
        raise InvalidRequest(f"window: a duration such as 15m, 1h or 24h, at most 24h (not {text!r})", field="window")
    rows = await _reconciler(request).report(window_s, instances_of(gateway.table))
    return FastJSONResponse({"window_s": window_s, "interval_s": POLL_S, "rows": [row.body() for row in rows]})


ROUTES = [Route("/admin/billing/reconcile", admin_reconcile, methods=["GET"])]
