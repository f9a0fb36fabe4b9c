"""What one request asks of the data plane, built once by the edge that received it.

Five ways in (the JSON API, OpenAI Images, its stream, KServe v2 over HTTP and over
gRPC) each translate their own protocol — HTTP headers, gRPC metadata, KServe
``parameters``, OpenAI fields — into one :class:`Ask`, and only here are the steering
headers read: ``X-Canary``, ``X-Priority``, ``Cache-Control``. Nothing downstream reads
a header again (routing rules still *match* on the headers kept in the facts), so an
edge cannot forget one of them: that is how the stream once ignored two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from image_router.backends.base import ImageRequest
from image_router.config.table import Tenant
from image_router.inference import InferOptions, canary_choice, priority_level
from image_router.policy.match import RequestFacts

__all__ = ["Ask"]

_NO_QUERY: Mapping[str, str] = {}


class Ask(NamedTuple):
    """One request, as the data plane sees it.

    ``priority`` is what the client asked for (``None``: the route's level); the tenant's
    rules decide later what of ``canary``, ``priority`` and the intent it may steer.
    ``budget_s`` is the client's own deadline (a gRPC deadline, KServe's ``timeout``),
    which caps the route's budget. ``random_seeds``: a request without seeds gets random
    ones (the OpenAI and JSON APIs), else the model draws its own (KServe, as Triton)."""

    facts: RequestFacts
    request: ImageRequest
    started: float | None
    tenant: Tenant | None = None
    canary: str | None = None
    priority: int | None = None
    cache_control: str | None = None
    budget_s: float | None = None
    random_seeds: bool = True
    query: Mapping[str, str] = _NO_QUERY
    max_n: int | None = None  # images it may ask for, when not the route's max_n (a job: jobs.max_n)

    @classmethod
    def of(
        cls,
        facts: RequestFacts,
        request: ImageRequest,
        started: float | None,
        tenant: Tenant | None = None,
        kserve: InferOptions | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Ask:
        """The request from its facts, whose ``headers`` (HTTP headers or gRPC metadata,
        lower-case) are read here for the steering facts. ``kserve``: a KServe request's
        own ``priority`` and ``timeout`` parameters (the priority wins over
        ``X-Priority``; the timeout caps the budget) — and, as Triton does, the model
        draws the seeds of a request that sends none."""
        headers = facts.headers
        priority = kserve.priority if kserve is not None else None
        if priority is None:
            priority = priority_level(headers.get("x-priority"))
        return cls(
            facts,
            request,
            started,
            tenant=tenant,
            canary=canary_choice(headers.get("x-canary")),
            priority=priority,
            cache_control=headers.get("cache-control"),
            budget_s=kserve.budget_s if kserve is not None else None,
            random_seeds=kserve is None,
            query=query or _NO_QUERY,
        )
