"""The usage ledger: what every billed answer cost, by day x tenant x route x model, as
counts hashes in the state store (``u:{YYYYMMDD}:{tenant}``, fields
``{route}|{model}|{images,cached,compute_ms,cost}``, integers: cost in micro-units, so
``GET /admin/usage`` sums exactly to the answers' ``usage.cost``). Pure: key names,
fields and rows, and rows summed over what a reader does not group by (:func:`grouped`);
the gateway writes them, :mod:`image_router.http.usage_api` reads them.

One write per answer, off the request path and never retried (a retry after a lost
reply could count twice); a store fault loses that answer's line (logged by the guard).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from image_router.billing.spec import MICROS
from image_router.billing.usage import Usage

__all__ = ["ANONYMOUS", "GROUPS", "KEEP_S", "day_of", "fields", "grouped", "key", "rows"]

ANONYMOUS = "_anonymous"  # open mode: a request without a tenant
KEEP_S = 400 * 86400  # a day's ledger is kept this long
_KINDS = ("images", "cached", "compute_ms", "cost")
GROUPS = ("day", "tenant", "route", "model")  # a row's keys, in the order rows name them


def day_of(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y%m%d")


def key(day: str, tenant: str) -> str:
    return f"u:{day}:{tenant}"


def fields(route: str, model: str, usage: Usage) -> dict[str, int]:
    values = (usage.images, usage.cached_images, usage.compute_ms, usage.cost.total)
    return {f"{route}|{model}|{kind}": value for kind, value in zip(_KINDS, values, strict=True)}


def rows(day: str, tenant: str, counts: dict[str, int]) -> list[dict[str, Any]]:
    """One row per route x model of a day's counts."""
    grouped: dict[tuple[str, str], dict[str, int]] = {}
    for name, value in counts.items():
        route, model, kind = name.rsplit("|", 2)
        grouped.setdefault((route, model), {})[kind] = value
    out = []
    for (route, model), got in sorted(grouped.items()):
        out.append({
            "day": f"{day[:4]}-{day[4:6]}-{day[6:]}", "tenant": tenant, "route": route, "model": model,
            "images": got.get("images", 0), "cached_images": got.get("cached", 0),
            "compute_s": got.get("compute_ms", 0) / 1000, "cost": round(got.get("cost", 0) / MICROS, 6),
            "cost_micros": got.get("cost", 0),
        })  # fmt: skip
    return out


def grouped(rows: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """``rows`` (as :func:`rows` makes them) summed over every key of :data:`GROUPS` not
    in ``by``: one row per distinct value of ``by`` (none: one row, the total), its keys
    in :data:`GROUPS`' order, sorted by them. Sums are of integers (compute in ms, cost
    in micro-units), so any grouping adds up to exactly the ungrouped total."""
    keys = tuple(k for k in GROUPS if k in by)
    sums: dict[tuple[str, ...], list[int]] = {}
    for row in rows:
        counts = sums.setdefault(tuple(row[k] for k in keys), [0, 0, 0, 0])
        counts[0] += row["images"]
        counts[1] += row["cached_images"]
        counts[2] += round(row["compute_s"] * 1000)
        counts[3] += row["cost_micros"]
    if not keys and not sums:
        sums[()] = [0, 0, 0, 0]  # the total of nothing is a row of zeros
    return [
        {
            **dict(zip(keys, values, strict=True)),
            "images": images, "cached_images": cached, "compute_s": compute_ms / 1000,
            "cost": round(cost / MICROS, 6), "cost_micros": cost,
        }
        for values, (images, cached, compute_ms, cost) in sorted(sums.items())
    ]  # fmt: skip
