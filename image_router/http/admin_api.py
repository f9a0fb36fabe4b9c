"""Health probes and the admin API (reload, config, explain).

``/healthz`` is liveness (the process answers); ``/readyz`` is readiness (a table is
loaded and at least one backend is ready). Admin endpoints need
``Authorization: Bearer $ROUTER_ADMIN_TOKEN``; with no token configured they answer
404 as if they did not exist, so an unconfigured gateway exposes no control surface.

The status page's cookie session is accepted too, but a call that changes something
(any method but GET and HEAD) from a cookie session must also carry ``X-Router-Admin``:
a header no form or simple request from another site can set, whatever its content
type. Wrong tokens (Bearer or the sign-in form) are audited and throttled per client
address (:class:`SignInThrottle`); the audit's "from" is the connection's address, which
believes ``X-Forwarded-For`` only from the proxies ``--forwarded-allow-ips`` names.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from image_router.config.table import Route, RoutingTable
from image_router.errors import Forbidden, InvalidRequest, NotFound, RateLimited, Unauthorized
from image_router.http.common import GenerationFields, gateway_of, parse_json_model, read_body
from image_router.policy.match import RequestFacts
from image_router.reload import RoutesReloader

__all__ = [
    "SignInThrottle",
    "admin_cache",
    "admin_cache_purge",
    "admin_config",
    "admin_explain",
    "admin_pregenerate",
    "admin_pregenerate_status",
    "admin_reload",
    "admin_token",
    "check_admin",
    "check_readout",
    "check_throttle",
    "describe",
    "healthz",
    "readyz",
    "sign_in_failed",
]


audit_log = logging.getLogger("router.audit")
SESSION_COOKIE = "router_admin"


SESSION_S = 12 * 3600  # a status-page session lasts a working day


def session_value(token: str, expires: int) -> str:
    """What the status page's cookie holds: when it expires and a MAC of that with the
    token — never the token itself, and worthless after ``expires`` (epoch seconds)."""
    mac = hmac.new(token.encode(), f"router-admin-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def _valid_session(token: str, cookie: str) -> bool:
    expires, _, _ = cookie.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(cookie.encode(), session_value(token, int(expires)).encode())


def audit(request: Request, action: str, **details: Any) -> None:
    """One line per admin action that changes something (reload, purge, pre-generation,
    sign-in): when, what, and from where — the admin token is one shared secret, so
    "who" is the client's address and how it signed in."""
    how = "bearer" if request.headers.get("authorization") else "session"
    line = {"ts": round(time.time(), 3), "audit": action, "from": _client(request), "auth": how, **details}
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None and runtime.access_log is not None:  # beside the access log's lines
        runtime.access_log.record(line)
    else:  # the access log is off: on stderr, where the gateway's own warnings go
        audit_log.warning(orjson.dumps(line).decode())


def _client(request: Request) -> str:
    """The connection's address: uvicorn has already replaced it with the
    ``X-Forwarded-For`` client when (and only when) the peer is a trusted proxy."""
    return request.client.host if request.client else ""


class SignInThrottle:
    """Wrong admin tokens per client address: after ``limit`` failures within
    ``window_s`` an address is refused (429) until the oldest ages out. At most
    ``max_addresses`` are remembered (the longest quiet forgotten first), so a flood of
    addresses costs bounded memory. The clock is injected (tests pass a fake)."""

    def __init__(
        self,
        limit: int = 5,
        window_s: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        now = self.clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        return failures[0] + self.window_s - now if len(failures) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[address] = failures  # most recent last
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


def _throttle(request: Request) -> SignInThrottle | None:
    throttle: SignInThrottle | None = getattr(request.app.state, "sign_ins", None)
    return throttle


def check_throttle(request: Request) -> None:
    """Refuse (429) an address with too many wrong tokens lately, before comparing."""
    throttle = _throttle(request)
    wait = throttle.retry_after(_client(request)) if throttle is not None else 0.0
    if wait > 0:
        raise RateLimited("too many wrong admin tokens from this address; try later", retry_after_s=int(wait) + 1)


def sign_in_failed(request: Request, how: str) -> None:
    """A wrong token: audited (never the token itself) and counted against the address."""
    throttle = _throttle(request)
    if throttle is not None:
        throttle.failed(_client(request))
    audit(request, "sign-in failed", via=how)


def admin_token(request: Request) -> str:
    """The configured token; without one the admin surface does not exist (404)."""
    token: str | None = request.app.state.admin_token
    if not token:
        raise NotFound("admin API is disabled (set ROUTER_ADMIN_TOKEN)")
    return token


def check_readout(request: Request, admin_only: bool) -> None:
    """In ``tenants: {mode: keys}``, what the gateway knows about its traffic is not for
    anyone who can reach it (issue 30, item 8): read-outs need the admin token, or —
    unless ``admin_only`` — any valid tenant key. In open mode they stay open, as the
    rest of the gateway is."""
    gateway = gateway_of(request)
    if gateway.table.tenant_mode != "keys":
        return
    given = request.headers.get("authorization", "")
    token: str | None = request.app.state.admin_token
    if token and given and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return
    if admin_only:
        raise Unauthorized("in keys mode this read-out needs Authorization: Bearer <ROUTER_ADMIN_TOKEN>")
    gateway.authenticate(given or None)  # a 401 unless a tenant's key


def check_admin(request: Request) -> None:
    """``Authorization: Bearer <token>``, or the session cookie the login form sets (with
    ``X-Router-Admin`` on anything but GET and HEAD)."""
    token = admin_token(request)
    given = request.headers.get("authorization", "")
    if given:
        check_throttle(request)
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return
        sign_in_failed(request, "bearer")
        raise Unauthorized("admin API needs Authorization: Bearer <ROUTER_ADMIN_TOKEN>")
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie and _valid_session(token, cookie):
        if request.method not in ("GET", "HEAD") and not request.headers.get("x-router-admin"):
            raise Forbidden("from a browser session, send the X-Router-Admin header (the status page does)")
        return
    raise Unauthorized("admin API needs Authorization: Bearer <ROUTER_ADMIN_TOKEN>")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness for probes, always open; in keys mode the config digest only with a key."""
    gateway = gateway_of(request)
    ok = await gateway.ready()
    body = {"status": "ready" if ok else "not_ready"}
    try:
        check_readout(request, admin_only=False)
        body["config_digest"] = gateway.table.digest
    except Unauthorized:
        pass
    return JSONResponse(body, status_code=200 if ok else 503)


async def admin_reload(request: Request) -> Response:
    check_admin(request)
    reloader: RoutesReloader = request.app.state.reloader
    result = reloader.reload()
    audit(request, "reload", ok=result.ok)
    return JSONResponse(result.to_dict(), status_code=200 if result.ok else 422)


def describe(table: RoutingTable, serving: Callable[[Route], Route] | None = None) -> dict[str, Any]:
    """The active table as JSON; secrets are never included. ``serving`` gives a route
    as it is served now (a rollout's live weight instead of the file's)."""
    return {
        "digest": table.digest,
        "source": table.source,
        "backends": {n: {"type": b.kind, "urls": list(b.urls)} for n, b in table.backends.items()},
        "models": {
            n: {
                "backend": m.backend,
                "remote_model": m.remote_name,
                "version": m.version,
                "latency_hint_ms": m.latency_hint_ms,
                "max_concurrency": m.max_concurrency,
            }
            for n, m in table.models.items()
        },
        "routes": [
            {
                "name": r.name,
                "arms": [
                    {"model": a.model, "weight": a.weight, "canary": a.canary, "rollout": a.rollout is not None}
                    for a in (serving(r) if serving is not None else r).arms
                ],
                "budget_ms": r.budget_ms,
                "fallback": list(r.fallback),
                "sticky": None if r.sticky is None else ":".join(r.sticky),
            }
            for r in (*table.routes, table.default)
        ],
    }


async def admin_config(request: Request) -> Response:
    check_admin(request)
    reloader: RoutesReloader = request.app.state.reloader
    gateway = gateway_of(request)
    return JSONResponse(
        {
            **reloader.status(),
            "table": describe(gateway.table, gateway.rollouts.route_for),
            "latency": gateway.latency(),
            "models": gateway.models(),
            "backends": gateway.backend_snapshots(),
        }
    )


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    intent: str | None = None
    model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


async def admin_explain(request: Request) -> Response:
    check_admin(request)
    body = parse_json_model(await read_body(request), ExplainRequest, request.headers.get("content-type"))
    gateway = gateway_of(request)
    return JSONResponse(gateway.explain(RequestFacts.of(body.prompt, body.intent, body.model, body.headers)))


def _no_cache() -> NotFound:
    return NotFound("no cache store: no route in routes.yaml has a cache block")


async def admin_cache(request: Request) -> Response:
    """The cache: store, circuit, counts, stored entries and bytes."""
    check_admin(request)
    top = int(request.query_params.get("top", "50")) if request.query_params.get("top", "50").isdigit() else 50
    status = await gateway_of(request).cache_status(top)
    if status is None:
        raise _no_cache()
    return JSONResponse(status)


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(@[0-9]+)?$")
    route: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    prompt: str | None = Field(default=None, min_length=1)
    all: bool = False


async def admin_cache_purge(request: Request) -> Response:
    """Purge by ``model`` (``name`` or ``name@version``), ``route``, ``prompt`` (all
    given must match), or ``{"all": true}``. An empty body purges nothing: a 400."""
    check_admin(request)
    body = parse_json_model(await read_body(request), PurgeRequest, request.headers.get("content-type"))
    cache = gateway_of(request).cache
    if cache is None:
        raise _no_cache()
    if not (body.all or body.model or body.route or body.prompt):
        raise InvalidRequest("say what to purge: model, route, prompt, or all: true", field="all")
    model, _, version = (body.model or "").partition("@")
    removed = await cache.purge(model=model or None, version=version or None, route=body.route, prompt=body.prompt)
    audit(request, "purge", model=body.model, route=body.route, prompt=bool(body.prompt), all=body.all, removed=removed)
    return JSONResponse({"removed": removed})


class PregenItem(GenerationFields):
    model_config = ConfigDict(extra="ignore")  # top_prompts entries carry counts: accepted as they are

    route: str | None = None


class PregenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PregenItem] = Field(min_length=1, max_length=100_000)


async def admin_pregenerate(request: Request) -> Response:
    """Queue prompts for generation on idle capacity (see :mod:`image_router.fill`); the
    answer says how many were queued and why the others were not."""
    check_admin(request)
    body = parse_json_model(await read_body(request, 64 << 20), PregenRequest, request.headers.get("content-type"))
    gateway = gateway_of(request)
    if gateway.cache is None:
        raise _no_cache()
    counts = gateway.pregenerate([item.model_dump() for item in body.items])
    audit(request, "pregenerate", items=len(body.items), queued=counts.get("queued", 0))
    return JSONResponse(counts, status_code=202)


async def admin_pregenerate_status(request: Request) -> Response:
    check_admin(request)
    return JSONResponse(gateway_of(request).fill.describe())
