"""The ``usage`` a served request reports, and its renderings: the OpenAI-shaped object
(token fields present — the ``openai`` SDK types them as required — and 0 for diffusion
tiers, which consume no tokens; a hosted tier's upstream counts passed through unchanged;
plus ``cost`` inside ``usage``, as OpenRouter does), the
``X-Router-Usage`` header (also gRPC metadata and the access log), and KServe
parameters. Pure values; :mod:`image_router.billing.meter` makes them from an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from image_router.billing.price import Cost
from image_router.billing.spec import MICROS
from image_router.billing.tokens import Tokens

__all__ = ["Usage"]


def _no_tokens() -> dict[str, Any]:
    return {
        "input_tokens": 0,
        "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
        "output_tokens": 0,
        "total_tokens": 0,
    }


def _money(micro: int) -> float:
    return round(micro / MICROS, 6)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one answer used and cost. ``compute_source``: ``model`` (the model's own
    COMPUTE_NS), ``gateway`` (the gateway's observed backend time: includes Triton's
    queueing, an over-estimate), ``cache`` (from the store: 0) or ``none`` (hosted)."""

    images: int
    cached_images: int
    compute_ns: int
    compute_source: str
    cost: Cost
    currency: str
    tokens: Tokens | None = None  # what a hosted upstream said it used (None: no tokens)

    @property
    def compute_s(self) -> float:
        return round(self.compute_ns / 1e9, 6)

    @property
    def compute_ms(self) -> int:
        return round(self.compute_ns / 1e6)

    def body(self) -> dict[str, Any]:
        """The ``usage`` object of an OpenAI-shaped answer; ``cost_details.tokens`` only
        on an answer that reported tokens (a diffusion tier's stays as it was)."""
        details = {
            "compute": _money(self.cost.compute),
            "per_image": _money(self.cost.per_image),
            "cache_hits": _money(self.cost.cache_hits),
        }
        if self.tokens is not None:
            details["tokens"] = _money(self.cost.tokens)
        return {
            **(_no_tokens() if self.tokens is None else self.tokens.body()),
            "images": self.images,
            "cached_images": self.cached_images,
            "compute_s": self.compute_s,
            "compute_source": self.compute_source,
            "cost": _money(self.cost.total),
            "currency": self.currency,
            "cost_details": details,
        }

    def header(self) -> str:
        """``X-Router-Usage`` (an RFC 8941 dictionary)."""
        return (
            f"images={self.images}, cached={self.cached_images}, compute-ms={self.compute_ms}, "
            f'cost={_money(self.cost.total):.6f}, currency="{self.currency}"'
        )

    def parameters(self) -> dict[str, str]:
        """KServe answer parameters (strings, as the other ``router_*`` ones)."""
        return {
            "router_usage": self.header(),
            "router_cost": f"{_money(self.cost.total):.6f}",
            "router_compute_ms": str(self.compute_ms),
        }
