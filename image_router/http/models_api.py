"""``GET /v1/models`` and ``GET /v1/models/{model}``: the names a caller may put in
``model``, in OpenAI's list shape, so OpenAI tooling and UIs (and the ``openai`` SDK's
``client.models.list()``) see what this gateway serves.

A name is a logical model (a tier), a route, or an alias from ``aliases:``; each
entry says which (``kind``) and, for an alias, what it stands for (``target``). In
``tenants: {mode: keys}`` the caller's key is required and the list holds only what
that tenant may use — :func:`image_router.decide.may_use` on the route the name is
routed to, the rule :func:`image_router.decide.route_phase` enforces when it asks — and
aliases of ``auto`` (routed by the rules, which may pick a route it may use). ``created`` is when this
replica loaded the routes table now running (OpenAI's field is a Unix time; a model
here has no other birthday). An unknown name, or one the tenant may not use, is a 404
``model_not_found`` — a tenant cannot probe for the others'.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from image_router.config.table import RoutingTable, Tenant
from image_router.decide import may_use
from image_router.errors import UnknownModel
from image_router.http.common import FastJSONResponse, gateway_of, tenant_of
from image_router.policy.match import RequestFacts, select_route
from image_router.reload import RoutesReloader

__all__ = ["ROUTES", "listing"]

OWNER = "image-router"


def _kind(table: RoutingTable, name: str) -> str:
    if name in table.models:
        return "model"
    return "alias" if name in table.model_aliases else "route"


def _allowed(table: RoutingTable, tenant: Tenant | None, name: str) -> bool:
    """What :func:`~image_router.decide.route_phase` would allow for ``model: name`` with
    no prompt, intent or header to steer it (an alias of ``auto`` is routed by the rules,
    which may pick a route the tenant may use: listed)."""
    if tenant is None or tenant.routes is None or table.model_aliases.get(name) == "auto":
        return True
    return may_use(tenant, select_route(table, RequestFacts("", model=name)), name)


def listing(table: RoutingTable, tenant: Tenant | None, created: int) -> list[dict[str, Any]]:
    """The entries ``tenant`` (``None``: anyone, open mode) may see, in the table's order."""
    out = []
    for name in table.aliases():
        if not _allowed(table, tenant, name):
            continue
        entry: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": OWNER}
        entry["kind"] = _kind(table, name)
        if entry["kind"] == "alias":
            entry["target"] = table.model_aliases[name]
        out.append(entry)
    return out


def _created(request: Request) -> int:
    reloader: RoutesReloader = request.app.state.reloader
    return int(reloader.loaded_at)


async def list_models(request: Request) -> Response:
    tenant = tenant_of(request)  # a 401 in keys mode without a valid key
    data = listing(gateway_of(request).table, tenant, _created(request))
    return FastJSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    tenant = tenant_of(request)
    name = request.path_params["model"]
    table = gateway_of(request).table
    for entry in listing(table, tenant, _created(request)):
        if entry["id"] == name:
            return FastJSONResponse(entry)
    raise UnknownModel(f"model {name!r} is not served here", field="model", model=name)


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
