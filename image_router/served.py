"""What a served request is, as values: the cache plan it was given and the answer.

These are the data plane's result types, below every edge and above the dispatcher, so
an edge that formats an answer imports no dispatcher and the dispatcher imports no
edge. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from image_router.backends.base import ImageResult
from image_router.billing.usage import Usage
from image_router.config.table import Model, Route

__all__ = ["CachePlan", "Served"]


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What one request may do with the result cache (decided from the route's
    ``cache`` block, the seedless policy and ``Cache-Control``)."""

    lookup: bool
    store: bool
    ttl_s: float
    skipped: str | None = None  # why the lookup was skipped: the answer's X-Cache then
    repeatable: bool = True  # False: its seeds were drawn at random, no identical request can follow
    scope: str = ""  # whose entries it may read and write: "" shared, else a tenant's name


@dataclass(frozen=True, slots=True)
class Served:
    """A successful answer and everything needed to tag it."""

    result: ImageResult
    route: Route
    model: Model
    attempts: int
    fallback: tuple[tuple[str, str], ...]
    canary: bool
    queue_s: float
    backend_s: float
    total_s: float
    hedged: bool = False
    cache: str | None = None  # X-Cache: HIT, MISS, COALESCED, BYPASS (None: route not cached)
    age_s: float = 0.0  # of a stored result
    seeds: tuple[int, ...] | None = None  # what the images were made with
    tenant: str | None = None  # who asked (a tenant's name; None: open mode, no key)
    limit_headers: dict[str, str] = field(default_factory=dict)  # the tenant's x-ratelimit-*
    priority: int | None = None  # the admission level it was served at (None: the default)
    usage: Usage | None = None  # what it used and cost (None: no `billing` block)
    # what is worked out of it once and read twice (its tags: by the edge's answer and by
    # the metrics and access log); a copy made by `dataclasses.replace` starts empty
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def stored(self) -> bool:
        """The image came from the result store (a hit, or a flight another request or
        replica made), not from a model for this request."""
        return self.cache in ("HIT", "COALESCED")

    @property
    def compute(self) -> tuple[int, str]:
        """Nanoseconds of compute this answer is billed for, and where the figure came
        from: 0 from the store (``cache``: the request that made it paid), the model's
        own COMPUTE_NS (``model``), nothing for a hosted API's encoded images (``none``),
        else the gateway's observed backend time (``gateway``: it includes Triton's
        queueing and any failed attempt before, so it over-estimates)."""
        if self.stored:
            return 0, "cache"
        if self.result.compute_ns is not None:
            return sum(self.result.compute_ns), "model"
        if self.result.encoded is not None:
            return 0, "none"
        return round(self.backend_s * 1e9), "gateway"

    @property
    def version(self) -> str:
        """The model version that made the images: the answer's own, else the pinned one."""
        return self.result.model_version or self.model.version or ""

    @property
    def model_tag(self) -> str:
        version = self.version
        return f"{self.model.name}@{version}" if version else self.model.name
