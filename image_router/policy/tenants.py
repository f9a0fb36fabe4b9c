"""Who may call, and how much: tenant keys and per-tenant limits (pure; ``now`` passed in).

Keys are kept only as SHA-256 digests and a presented key is hashed before it is looked
up, so neither the lookup's timing nor a memory dump gives a key away: the lookup is by
digest in a dict (the table's ``tenant_keys``). Its timing follows the per-process
secret string hash and, at most, how much of a stored digest the attacker's own digest
shares, and a digest leads to no key (SHA-256 has no known preimage). Walking every
tenant's digests with :func:`hmac.compare_digest` instead cost each request time in
proportion to the tenants (~0.15 ms at a thousand).

Limits, per gateway replica (a replica counts what it serves; the shared limits, one
count for every gateway, are the state store's: :mod:`image_router.state.gcra`, whose reply
:func:`shared_decision` reads):

- requests per second with a burst: a token bucket (GCRA's arithmetic: one timestamp
  per tenant, no timer);
- images per day: a counter per UTC day;
- requests in flight at once.

Every check returns what the answer's OpenAI-style ``x-ratelimit-*`` headers say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from image_router.config.table import Tenant, key_digest

__all__ = ["Decision", "TenantState", "bearer_key", "find_tenant", "limit_args", "shared_decision"]


def bearer_key(authorization: str | None) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (scheme case-insensitive), else None."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key and " " not in key else None


def find_tenant(keys: Mapping[str, Tenant], presented: str) -> Tenant | None:
    """The tenant whose key is ``presented`` (``keys``: a table's ``tenant_keys``)."""
    return keys.get(key_digest(presented))


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go ahead, and what to tell the client."""

    allowed: bool
    reason: str = ""  # "rate" | "images" | "concurrency" when refused
    retry_after_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def _reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 1 else f"{math.ceil(seconds)}s"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


US = 1_000_000


def limit_args(tenant: Tenant, images: int) -> list[int]:
    """The state store's arguments for ``tenant`` (:func:`image_router.state.gcra.step`): the
    interval in whole microseconds, exact to 1/1,000,000 s (a rate above 1,000,000/s
    is held to that)."""
    interval = max(1, round(US / tenant.requests_per_s)) if tenant.requests_per_s else 0
    per_day = tenant.images_per_day if tenant.images_per_day is not None else -1
    return [interval, interval * max(1, tenant.burst), images, per_day]


def shared_decision(tenant: Tenant, reply: list[int], wall: float) -> Decision:
    """What the state store's reply (microseconds) means, with the same headers as a
    local count."""
    allowed, reason, ahead_us, used = reply
    interval_us, tolerance_us, _, per_day = limit_args(tenant, 0)
    headers: dict[str, str] = {}
    if interval_us:
        headers["x-ratelimit-limit-requests"] = str(max(1, tenant.burst))
        if allowed:
            headers["x-ratelimit-remaining-requests"] = str(max(0, (tolerance_us - ahead_us) // interval_us))
            headers["x-ratelimit-reset-requests"] = _reset(ahead_us / US)
        elif reason == 1:
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = _reset(ahead_us / US)
    until_midnight = (int(wall // 86400) + 1) * 86400 - wall
    if per_day >= 0:
        headers["x-ratelimit-limit-images"] = str(per_day)
        headers["x-ratelimit-remaining-images"] = str(max(0, per_day - used))
        headers["x-ratelimit-reset-images"] = _reset(until_midnight)
    if allowed:
        return Decision(True, headers=headers)
    if reason == 1:
        return Decision(False, "rate", max(0.000001, (ahead_us + interval_us - tolerance_us) / US), headers)
    return Decision(False, "images", until_midnight, headers)


EPSILON_S = 1e-6  # slack in GCRA's comparisons: a monotonic clock of days or years carries rounding


@dataclass
class TenantState:
    """One tenant's counters on this replica."""

    tat: float = 0.0  # GCRA's theoretical arrival time
    day: int = -1
    images_today: int = 0
    inflight: int = 0

    def admit(self, tenant: Tenant, images: int, now: float, wall: float) -> Decision:
        """Count a request for ``images`` images at ``now`` (monotonic) / ``wall``
        (seconds since the epoch, for the day) if the limits allow it."""
        headers: dict[str, str] = {}
        day = int(wall // 86400)
        if day != self.day:
            self.day, self.images_today = day, 0
        if self.busy(tenant):
            return Decision(False, "concurrency", 1.0, headers)
        new_tat = self.tat
        if tenant.requests_per_s:
            interval = 1.0 / tenant.requests_per_s
            tolerance = interval * max(1, tenant.burst)
            new_tat = max(self.tat, now) + interval
            remaining = int((now + tolerance - new_tat + EPSILON_S) // interval)
            headers["x-ratelimit-limit-requests"] = str(max(1, tenant.burst))
            if new_tat - now > tolerance + EPSILON_S:  # rounding: now + interval - now may exceed interval
                headers["x-ratelimit-remaining-requests"] = "0"
                headers["x-ratelimit-reset-requests"] = _reset(self.tat - now)
                return Decision(False, "rate", new_tat - tolerance - now, headers)
            headers["x-ratelimit-remaining-requests"] = str(max(0, remaining))
            headers["x-ratelimit-reset-requests"] = _reset(new_tat - now)
        if tenant.images_per_day is not None:
            until_midnight = (day + 1) * 86400 - wall
            headers["x-ratelimit-limit-images"] = str(tenant.images_per_day)
            if self.images_today + images > tenant.images_per_day:
                headers["x-ratelimit-remaining-images"] = str(max(0, tenant.images_per_day - self.images_today))
                headers["x-ratelimit-reset-images"] = _reset(until_midnight)
                return Decision(False, "images", until_midnight, headers)
            headers["x-ratelimit-remaining-images"] = str(tenant.images_per_day - self.images_today - images)
            headers["x-ratelimit-reset-images"] = _reset(until_midnight)
            self.images_today += images
        self.tat = new_tat
        self.enter()
        return Decision(True, headers=headers)

    def busy(self, tenant: Tenant) -> bool:
        """At its concurrency limit (counted on this replica only)."""
        return tenant.max_concurrency is not None and self.inflight >= tenant.max_concurrency

    def enter(self) -> None:
        """One more of its requests is running here (see :meth:`done`)."""
        self.inflight += 1

    def done(self) -> None:
        self.inflight = max(0, self.inflight - 1)
