"""The seam between a walk and the result cache: what the walk asks, not how it is done.

A stored tier matters to the budget walk — its forecast is zero, so the budget policy
serves it wherever the walk reaches it — but *how* results are found and made once
(version trust, one store round trip for the chain, flights, leases between replicas,
store-after-generate) is the cache's business: :class:`StoredTiers` is all the walk
sees, implemented by :class:`image_router.cache.coordinate.Coordinator` and wired in by the
gateway. Keys pass through the walk as opaque values. :class:`NoStore` is the seam
with no cache behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from image_router.backends.base import ImageRequest, ImageResult
from image_router.config.table import Model, Route
from image_router.served import CachePlan

__all__ = ["Flight", "Hold", "Lookup", "NoStore", "Stored", "StoredTiers"]

Hold = Callable[["asyncio.Future[Any]"], None]  # told of work that outlives its request


class Stored(NamedTuple):
    """A tier's stored result and the seeds it was made with."""

    result: ImageResult
    seeds: tuple[int, ...]


class Lookup(NamedTuple):
    """The cache's part in one request: each tier's key, the tiers already stored,
    and the ``X-Cache`` the answer starts with (``MISS``, or why the lookup was skipped)."""

    keys: Mapping[str, object]
    hits: Mapping[str, Stored]
    x_cache: str


class Flight(NamedTuple):
    """What making one tier's image for one request takes, for the cache to make it once."""

    model: Model
    request: ImageRequest
    plan: CachePlan
    deadline: float  # the request's, on the dispatcher's clock
    own_s: float  # this tier's service time: how long making it here would take
    margin_s: float  # the gateway's own time between two attempts
    generate: Callable[[], Awaitable[ImageResult | str]]  # admit, then one timed call
    hold: Hold | None = None  # given the flight's task when this request leads it


class StoredTiers(Protocol):
    def key(self, route: Route, model: Model, request: ImageRequest, scope: str = "") -> object:
        """What ``model``'s result for ``request`` (with its seeds) on ``route`` is
        stored under, in ``scope`` (``""``: shared); its ``str`` names it (fill jobs)."""
        ...

    async def lookup_chain(
        self, route: Route, tiers: Sequence[Model], request: ImageRequest, plan: CachePlan, deadline: float
    ) -> Lookup | None:
        """Key the chain's tiers and find the stored ones (one bounded store round trip);
        ``None``: the cache takes no part (none configured, or no seeds to key by)."""
        ...

    async def through_flight(self, key: object, flight: Flight) -> tuple[ImageResult | str, bool]:
        """The tier's image for ``key`` made once however many ask (stored afterwards),
        or why not (a fallback reason); and whether someone else made it (``COALESCED``)."""
        ...

    def keep(self, key: object, model: Model, result: ImageResult, request: ImageRequest, plan: CachePlan) -> None:
        """Store a result generated outside a flight (a hedge's), in the background."""
        ...


class NoStore:
    """No result cache: nothing is looked up, a flight is one plain attempt."""

    def key(self, route: Route, model: Model, request: ImageRequest, scope: str = "") -> object:
        raise LookupError("no result cache is wired in: nothing is stored under a key")

    async def lookup_chain(
        self, route: Route, tiers: Sequence[Model], request: ImageRequest, plan: CachePlan, deadline: float
    ) -> Lookup | None:
        return None

    async def through_flight(self, key: object, flight: Flight) -> tuple[ImageResult | str, bool]:
        return await flight.generate(), False

    def keep(self, key: object, model: Model, result: ImageResult, request: ImageRequest, plan: CachePlan) -> None:
        return None
