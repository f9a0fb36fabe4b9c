"""Weighted and sticky choice between a route's arms (canary splits).

Sticky choice uses weighted rendezvous hashing: each arm scores ``-ln(u) / weight``
where ``u`` is a hash of (route, arm, key) mapped to (0, 1), and the lowest score
wins. The hash is SHA-256, so the assignment is the same in every process, replica
and restart; and raising one arm's weight only moves users *to* that arm, lowering it
only moves its own users away — nobody else changes side when a canary is rolled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from image_router.config.table import Arm, Route

__all__ = ["Choice", "Rng", "choose_arm", "sticky_key", "unit_hash"]


class Rng(Protocol):
    """What a weighted choice draws from (``random.Random`` in production, injected)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Choice:
    arm: Arm
    sticky: bool
    overridden: bool = False


def unit_hash(*parts: str) -> float:
    """A stable number in (0, 1) for ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def sticky_key(
    route: Route, headers: Mapping[str, str], query: Mapping[str, str], fields: Mapping[str, str]
) -> str | None:
    """The cohort key a route's ``sticky`` names, when the request carries it."""
    if route.sticky is None:
        return None
    kind, name = route.sticky
    source = {"header": headers, "query": query, "field": fields}[kind]
    value = source.get(name)
    return value or None


def _weighted(arms: Sequence[Arm], rng: Rng) -> Arm:
    total = sum(a.weight for a in arms)
    if total <= 0:
        return arms[0]
    point = rng.random() * total
    for arm in arms:
        point -= arm.weight
        if point < 0:
            return arm
    return arms[-1]


def _rendezvous(route_name: str, arms: Sequence[Arm], key: str) -> Arm:
    best, best_score = arms[0], math.inf
    for arm in arms:
        if arm.weight <= 0:
            continue
        score = -math.log(unit_hash(route_name, arm.model, key)) / arm.weight
        if score < best_score:
            best, best_score = arm, score
    return best


def choose_arm(route: Route, key: str | None, rng: Rng, override: str | None = None) -> Choice:
    """Pick an arm; ``override`` is the ``X-Canary`` cohort override (always|never)."""
    arms: Sequence[Arm] = route.arms
    overridden = False
    if override in ("always", "never") and len(arms) > 1:
        wanted = override == "always"
        subset = [a for a in arms if a.canary == wanted]
        if subset:
            arms, overridden = subset, True
    if len(arms) == 1:
        return Choice(arms[0], key is not None, overridden)
    if key is not None:
        return Choice(_rendezvous(route.name, arms, key), True, overridden)
    return Choice(_weighted(arms, rng), False, overridden)
