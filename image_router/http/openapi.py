"""``GET /openapi.json``: the HTTP API as an OpenAPI 3.1 document, and ``GET /docs``, a
page that renders it with nothing fetched from elsewhere (air-gapped clusters).

The request bodies' schemas are the pydantic models that validate them
(``model_json_schema``), so the document cannot say one thing while the gateway
checks another. Every operation the app serves is described in :data:`OPERATIONS`, by
path and method; :func:`document` walks the app's own routes and raises for one that is
not, so a new endpoint cannot ship undocumented (a test builds it), and nothing
described that the app does not serve is listed. Responses are described by their media
type and, for errors, the one error shape every endpoint answers (``error.code``
stable, ``error.param`` naming the field). The gRPC (KServe v2) service is not HTTP
and is not here: its ``.proto`` is Triton's own.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from image_router.http.admin_api import ExplainRequest, PregenRequest, PurgeRequest
from image_router.http.budgets_api import CreditRequest
from image_router.http.common import FastJSONResponse
from image_router.http.edits import OpenAIEditsRequest, OpenAIVariationsRequest
from image_router.http.images_api import GenerateRequest, OpenAIImagesRequest
from image_router.http.jobs_api import JobRequest

__all__ = ["OPERATIONS", "ROUTES", "Op", "document"]

JSON = "application/json"
TENANT, ADMIN, OPEN = "tenant", "admin", "open"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: what it does, who may call it, what it takes and answers."""

    summary: str
    tag: str
    auth: str = TENANT  # TENANT: an API key in keys mode; ADMIN: the admin token; OPEN: nobody's
    body: type[BaseModel] | None = None  # a JSON body validated by this model
    form: type[BaseModel] | None = None  # a multipart form: these fields and image files
    answers: tuple[str, ...] = (JSON,)  # the 200's media types
    status: str = "200"
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    headers: tuple[tuple[str, str], ...] = ()
    description: str = ""
    kserve_body: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_WAIT = (("Prefer", "`respond-async` (a job instead: 202), `wait=N` (hold up to N s)"),)
_IMAGE = ("image/png", "image/jpeg", "image/webp", "image/avif")
_READ = "model metadata (Triton's): open unless `readout: admin` in routes.yaml"

# fmt: off
OPERATIONS: dict[tuple[str, str], Op] = {
    # -- OpenAI Images ---------------------------------------------------------------
    ("/v1/images/generations", "post"): Op(
        "Generate images (OpenAI Images API)", "OpenAI", body=OpenAIImagesRequest,
        answers=(JSON, "text/event-stream"), headers=_WAIT,
        description="`stream: true` answers Server-Sent Events with partial images. Every answer says "
        "what served it in `X-Router-*` headers.",
    ),
    ("/v1/images/edits", "post"): Op("Edit an image with a prompt and an optional mask", "OpenAI",
                                     form=OpenAIEditsRequest),
    ("/v1/images/variations", "post"): Op("Variations of an image", "OpenAI", form=OpenAIVariationsRequest),
    ("/v1/models", "get"): Op("The names a caller may put in `model` (OpenAI's list shape)", "OpenAI"),
    ("/v1/models/{model}", "get"): Op("One name of `GET /v1/models`", "OpenAI"),
    ("/v1/images/{name}", "get"): Op(
        "An image by URL (`{id}.{ext}`: png, jpeg, webp, avif)", "Images", auth=OPEN, answers=_IMAGE,
        query=(("q", "quality 0-100"), ("expires", "a signed URL's expiry"), ("sig", "its signature")),
    ),
    ("/v1/usage", "get"): Op("The caller's own spend: ledger rows and budget windows", "Spend",
                             query=(("from", "YYYY-MM-DD"), ("to", "YYYY-MM-DD"))),
    # -- this gateway's own ----------------------------------------------------------
    ("/api/v1/generate", "post"): Op(
        "Generate an image (this gateway's API)", "Generate", body=GenerateRequest,
        answers=(JSON, *_IMAGE, "text/event-stream"), headers=_WAIT,
    ),
    # -- async jobs ------------------------------------------------------------------
    ("/v1/images/jobs", "post"): Op("Submit a job", "Jobs", body=JobRequest, status="202",
                                    headers=(("Idempotency-Key", "one job per key and tenant"), *_WAIT)),
    ("/v1/images/jobs", "get"): Op("The caller's jobs, newest first (OpenAI's list shape)", "Jobs",
                                   query=(("status", "comma-separated states"), ("limit", "1-100"),
                                          ("after", "a job id: the page after it"))),
    ("/v1/images/jobs/{job_id}", "get"): Op("A job (long-poll with `Prefer: wait=N`)", "Jobs", headers=_WAIT),
    ("/v1/images/jobs/{job_id}", "delete"): Op("Delete a finished job and its images", "Jobs"),
    ("/v1/images/jobs/{job_id}/result", "get"): Op("What the synchronous call would have answered", "Jobs"),
    ("/v1/images/jobs/{job_id}/events", "get"): Op(
        "The job's events (SSE, resumable with `Last-Event-ID`)", "Jobs", answers=("text/event-stream",),
        headers=(("Last-Event-ID", "resume after this sequence number"),),
    ),
    ("/v1/images/jobs/{job_id}/cancel", "post"): Op("Cancel a job (a running one stops computing)", "Jobs"),
    ("/v1/images/jobs/{job_id}/images/{name}", "get"): Op("One image of a completed job", "Jobs", answers=_IMAGE),
    # -- KServe v2 / Triton ----------------------------------------------------------
    ("/v2", "get"): Op("Server metadata", "KServe v2", auth=OPEN),
    ("/v2/health/live", "get"): Op("Liveness", "KServe v2", auth=OPEN),
    ("/v2/health/ready", "get"): Op("Readiness", "KServe v2", auth=OPEN),
    ("/v2/repository/index", "post"): Op("Every servable name and its state", "KServe v2", auth=OPEN),
    ("/v2/models/stats", "get"): Op("Every name's statistics (admin)", "KServe v2", auth=ADMIN),
    ("/v2/models/{model}", "get"): Op("Model metadata", "KServe v2", auth=OPEN, description=_READ),
    ("/v2/models/{model}/versions/{version}", "get"): Op("Model metadata", "KServe v2", auth=OPEN),
    ("/v2/models/{model}/ready", "get"): Op("Model readiness", "KServe v2", auth=OPEN),
    ("/v2/models/{model}/versions/{version}/ready", "get"): Op("Model readiness", "KServe v2", auth=OPEN),
    ("/v2/models/{model}/config", "get"): Op("Model configuration", "KServe v2", auth=OPEN),
    ("/v2/models/{model}/versions/{version}/config", "get"): Op("Model configuration", "KServe v2", auth=OPEN),
    ("/v2/models/{model}/stats", "get"): Op("Model statistics (admin)", "KServe v2", auth=ADMIN),
    ("/v2/models/{model}/versions/{version}/stats", "get"): Op("Model statistics (admin)", "KServe v2", auth=ADMIN),
    ("/v2/models/{model}/infer", "post"): Op(
        "Inference (KServe v2: JSON, or the binary tensor extension)", "KServe v2", kserve_body=True,
        answers=(JSON, "application/octet-stream"),
    ),
    ("/v2/models/{model}/versions/{version}/infer", "post"): Op("Inference at a version", "KServe v2",
                                                                kserve_body=True),
    # -- health and operations -------------------------------------------------------
    ("/healthz", "get"): Op("The process is up", "Operations", auth=OPEN),
    ("/readyz", "get"): Op("Ready to serve (backends, stores)", "Operations", auth=OPEN),
    ("/metrics", "get"): Op("Prometheus metrics", "Operations", auth=ADMIN, answers=("text/plain",)),
    ("/admin/reload", "post"): Op("Reload routes.yaml (a bad file never replaces the running one)", "Admin",
                                  auth=ADMIN),
    ("/admin/config", "get"): Op("The running routes table and the last reload", "Admin", auth=ADMIN),
    ("/admin/explain", "post"): Op("Which route and tiers a request would get", "Admin", auth=ADMIN,
                                   body=ExplainRequest),
    ("/admin/cache", "get"): Op("The result cache", "Admin", auth=ADMIN, query=(("top", "top prompts"),)),
    ("/admin/cache/purge", "post"): Op("Purge cached results", "Admin", auth=ADMIN, body=PurgeRequest),
    ("/admin/pregenerate", "post"): Op("Queue prompts for idle capacity", "Admin", auth=ADMIN, body=PregenRequest),
    ("/admin/pregenerate", "get"): Op("The pre-generation queue", "Admin", auth=ADMIN),
    ("/admin/usage", "get"): Op(
        "Spend by day, tenant, route and model (JSON or CSV)", "Spend", auth=ADMIN, answers=(JSON, "text/csv"),
        query=(("from", "YYYY-MM-DD"), ("to", "YYYY-MM-DD"), ("group_by", "any of day,tenant,route,model"),
               ("format", "json or csv")),
    ),
    ("/admin/budgets", "get"): Op("Every tenant's budget windows", "Spend", auth=ADMIN),
    ("/admin/budgets/{tenant}", "get"): Op("One tenant's budget windows", "Spend", auth=ADMIN),
    ("/admin/budgets/{tenant}/credit", "post"): Op("Credit a tenant's window", "Spend", auth=ADMIN,
                                                   body=CreditRequest),
    ("/admin/billing/reconcile", "get"): Op("Billed vs wasted vs Triton's own compute", "Spend", auth=ADMIN,
                                            query=(("window", "e.g. 1h"),)),
    ("/admin/canary", "get"): Op("Every rollout", "Rollouts", auth=ADMIN),
    ("/admin/canary/{route}", "get"): Op("One route's rollout", "Rollouts", auth=ADMIN),
    ("/admin/canary/{route}/{action}", "post"): Op("promote, rollback, pause, resume or abort a rollout",
                                                   "Rollouts", auth=ADMIN),
    ("/admin/jobs", "get"): Op("Job counts, oldest queued age, this replica's side", "Jobs (admin)", auth=ADMIN),
    ("/admin/jobs/drain", "post"): Op("Stop claiming jobs (this replica; `?scope=cluster`: all)", "Jobs (admin)",
                                      auth=ADMIN, query=(("scope", "replica or cluster"),)),
    ("/admin/jobs/resume", "post"): Op("Claim jobs again", "Jobs (admin)", auth=ADMIN,
                                       query=(("scope", "replica or cluster"),)),
    ("/admin/jobs/list", "get"): Op("Active jobs, or one tenant's", "Jobs (admin)", auth=ADMIN,
                                    query=(("tenant", "one tenant"), ("status", "states"), ("limit", "1-500"))),
    ("/admin/jobs/{job_id}", "get"): Op("Any tenant's job as stored", "Jobs (admin)", auth=ADMIN),
    ("/admin/jobs/{job_id}/cancel", "post"): Op("Cancel any tenant's job", "Jobs (admin)", auth=ADMIN),
    ("/admin/jobs/{job_id}/redeliver", "post"): Op("Send a job's last webhook event again", "Jobs (admin)",
                                                   auth=ADMIN),
    ("/admin/", "get"): Op("The status page", "Operations", auth=ADMIN, answers=("text/html",)),
    ("/admin/status.json", "get"): Op("What the status page shows", "Operations", auth=ADMIN),
    ("/admin/login", "get"): Op("The status page's sign-in form", "Operations", auth=OPEN, answers=("text/html",)),
    ("/admin/login", "post"): Op("Sign in to the status page (a form with the admin token)", "Operations",
                                 auth=OPEN, answers=("text/html",), status="303"),
    ("/openapi.json", "get"): Op("This document", "Operations", auth=OPEN),
    ("/docs", "get"): Op("This document, rendered", "Operations", auth=OPEN, answers=("text/html",)),
}
# fmt: on

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}")

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, snake_case"},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"], "description": "the field at fault"},
                "request_id": {"type": "string"},
            },
        }
    },
}
_KSERVE = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"],
                   "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                                  "datatype": {"type": "string"}, "data": {}, "parameters": {"type": "object"}}}},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}  # fmt: skip


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """``model``'s JSON Schema in ``components`` (its nested models beside it); a ref."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _form_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    ref = _schema(model, components)
    files = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "contentMediaType": "application/octet-stream",
                      "description": "the picture (also `image[]`, several)"},
            "mask": {"type": "string", "contentMediaType": "application/octet-stream",
                     "description": "white where the image may change"},
        },
    }  # fmt: skip
    return {"allOf": [ref, files]}


def _operation(path: str, method: str, op: Op, components: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": _operation_id(path, method)}
    if op.description:
        out["description"] = op.description
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in _PARAM.findall(path)]
    params += [{"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
               for n, d in op.query]  # fmt: skip
    params += [{"name": n, "in": "header", "required": False, "description": d, "schema": {"type": "string"}}
               for n, d in op.headers]  # fmt: skip
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": _schema(op.body, components)}}}
    elif op.form is not None:
        content = {"multipart/form-data": {"schema": _form_schema(op.form, components)}}
        out["requestBody"] = {"required": True, "content": content}
    elif op.kserve_body:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": {"$ref": "#/components/schemas/"
                                                                                "KServeInferRequest"}}}}  # fmt: skip
    error = {"description": "an error: `error.code` says which", "content": {JSON: {"schema": {"$ref":
             "#/components/schemas/Error"}}}}  # fmt: skip
    out["responses"] = {op.status: {"description": op.summary, "content": {m: {} for m in op.answers}},
                        "4XX": error, "5XX": error}  # fmt: skip
    if op.auth == TENANT:
        out["security"] = [{}, {"apiKey": []}]  # open mode: none; keys mode: a tenant's key
    elif op.auth == ADMIN:
        out["security"] = [{"adminToken": []}]
    else:
        out["security"] = [{}]
    return out


def _operation_id(path: str, method: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", _PARAM.sub(r"by_\1", path)).strip("_")
    return f"{method}_{words or 'root'}"


def served(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """``(path, method)`` of every operation ``routes`` serve (HEAD is GET's)."""
    out = []
    for route in routes:
        if isinstance(route, Route):
            path = _PARAM.sub(r"{\1}", route.path)
            out += [(path, m.lower()) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; :class:`LookupError` naming any route
    that :data:`OPERATIONS` does not describe."""
    pairs = served(routes)
    missing = [f"{m.upper()} {p}" for p, m in pairs if (p, m) not in OPERATIONS]
    if missing:
        raise LookupError(f"undocumented in image_router/http/openapi.py: {', '.join(missing)}")
    components: dict[str, Any] = {"Error": _ERROR, "KServeInferRequest": _KSERVE}
    paths: dict[str, dict[str, Any]] = {}
    for path, method in pairs:
        paths.setdefault(path, {})[method] = _operation(path, method, OPERATIONS[(path, method)], components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "image-router",
            "version": _version(),
            "description": "An inference gateway for image generation in front of NVIDIA Triton: the OpenAI "
            "Images API, KServe v2, async jobs, and its own API. Answers say what served them in `X-Router-*`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "a tenant's key (keys mode)"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ROUTER_ADMIN_TOKEN"},
            },
        },
    }


def _version() -> str:
    try:
        return importlib.metadata.version("image-router")
    except importlib.metadata.PackageNotFoundError:
        return "0"


@functools.cache
def _page() -> str:
    return resources.files("image_router.http").joinpath("api_docs.html").read_text()


async def openapi_json(request: Request) -> Response:
    doc = getattr(request.app.state, "openapi", None)
    if doc is None:  # built once per app: the routes do not change while it runs
        doc = document(request.app.routes)
        request.app.state.openapi = doc
    return FastJSONResponse(doc)


async def api_docs(request: Request) -> Response:
    return HTMLResponse(_page())


ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", api_docs, methods=["GET"]),
]
