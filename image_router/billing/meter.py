"""A served answer's :class:`~image_router.billing.usage.Usage`: its images, the compute it is
billed for (:attr:`image_router.served.Served.compute`) and their price (pure; the gateway
calls it once per answer, after the walk).

A hosted tier's answer carries the upstream's token counts (:class:`HostedResult`):
they are priced when the tier has a ``tokens`` price, and reported in ``usage`` either
way. Only the answer's own result is billed: a hedge's loser, a timed-out or abandoned
attempt before a downgrade never reaches the answer, so its compute is never charged.
"""

from __future__ import annotations

from image_router.backends.base import ImageRequest
from image_router.backends.openai import HostedResult
from image_router.billing.price import Cost, Shape, cost
from image_router.billing.spec import Billing
from image_router.billing.usage import Usage
from image_router.served import Served

__all__ = ["bill", "shape_of"]


def shape_of(served: Served, request: ImageRequest) -> Shape:
    """What prices are keyed by: the longer side served, the steps asked (None: the
    tier's default) and the size asked."""
    size = served.result.dimensions()
    side = max(size) if size is not None else None
    asked = f"{request.width}x{request.height}" if request.width and request.height else None
    return Shape(side, request.steps, asked, None)


def bill(billing: Billing, served: Served, request: ImageRequest) -> Usage:
    images = len(served.result)
    compute_ns, source = served.compute
    price = served.model.price
    tokens = served.result.tokens if isinstance(served.result, HostedResult) and not served.stored else None
    charge = Cost()
    if price is not None:  # compile refuses an unpriced routable model; a preview's own
        charge = cost(billing, price, images, compute_ns / 1e9, shape_of(served, request), served.stored, tokens)
    cached = images if served.stored else 0
    return Usage(images, cached, compute_ns, source, charge, billing.currency, tokens)
