"""``/admin/canary``: the rollouts, and an operator's hand on them (same token as the
rest of the admin API; ``router canary`` is its command line).

``GET /admin/canary`` lists every rollout (state, live weight, decisions with their
numbers, the latest analysis, the gallery); ``GET /admin/canary/{route}`` one of them;
``POST /admin/canary/{route}/{pause|resume|promote|abort}`` changes it in the shared
store, so every replica follows within a tick. Each change is an audit line.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from image_router.errors import Forbidden, InvalidRequest
from image_router.http.admin_api import audit, check_admin
from image_router.http.common import gateway_of

__all__ = ["ACTIONS", "canary_action", "canary_list", "canary_one"]

ACTIONS = ("pause", "resume", "promote", "abort")


async def canary_list(request: Request) -> Response:
    check_admin(request)
    return JSONResponse({"rollouts": gateway_of(request).rollouts.describe()})


async def canary_one(request: Request) -> Response:
    check_admin(request)
    return JSONResponse(gateway_of(request).rollouts.describe_one(request.path_params["route"]))


async def canary_action(request: Request) -> Response:
    """A signed-in browser (the session cookie, not a bearer token) must also send
    ``X-Router-Admin``: a header another site's form cannot set, so a page elsewhere
    cannot abort a rollout in an operator's name (the cookie is SameSite=Strict too)."""
    check_admin(request)
    if not request.headers.get("authorization") and not request.headers.get("x-router-admin"):
        raise Forbidden("from a browser session, send the X-Router-Admin header (the status page does)")
    route, action = request.path_params["route"], request.path_params["action"]
    if action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(ACTIONS)}", field="action")
    result = await gateway_of(request).rollouts.command(route, action)
    audit(request, f"canary {action}", route=route, weight=result["weight"], status=result["status"])
    return JSONResponse(result)
