"""A tenant's shared limits as one pure step, in integer microseconds.

The same arithmetic runs in three places that must agree: here (the SQLite store calls
it inside its transaction), in the Redis store's Lua script (:mod:`image_router.state.redis`),
and — in float seconds, for a replica counting on its own — in
:class:`image_router.policy.tenants.TenantState`; ``tests/unit/test_state_gcra.py`` drives them
with one sequence. Microseconds keep every rate up to 1,000,000/s exact (in
milliseconds, 2,000/s rounded to an interval of 0: no limit at all) and stay exact in
Lua's doubles (now ≈ 1.8e15 µs < 2^53).

GCRA keeps one number per tenant, the theoretical arrival time (``tat``): a request at
``now`` is allowed when ``max(tat, now) + interval - now <= tolerance``
(``tolerance = interval * burst``), and moves ``tat`` by one interval.

``args``: ``[interval_us (0: no rate), tolerance_us, images, images_per_day (-1: none)]``.
Reply: ``[allowed, reason (1 rate, 2 images), us, images used today]`` where ``us`` is,
when refused for the rate, how far the stored ``tat`` is ahead of now, else how far the
new one is.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DAY_KEY_TTL_S", "Step", "step"]

DAY_KEY_TTL_S = 2 * 86400  # a day's counter outlives its day (clocks of replicas differ a little)


@dataclass(frozen=True, slots=True)
class Step:
    reply: list[int]
    tat_us: int | None  # the rate key's new value (None: leave it)
    used: int | None  # the day key's new value (None: leave it)


def step(tat_us: int, used: int, now_us: int, args: list[int]) -> Step:
    """One request against the stored ``tat_us`` (0: none) and ``used`` images today."""
    interval, tolerance, images, per_day = args
    new_tat = now_us
    if interval > 0:
        tat = max(tat_us, now_us)
        new_tat = tat + interval
        if new_tat - now_us > tolerance:
            return Step([0, 1, tat - now_us, 0], None, None)
    if per_day >= 0:
        if used + images > per_day:
            return Step([0, 2, new_tat - now_us, used], None, None)
        used += images
    return Step(
        [1, 0, new_tat - now_us, used if per_day >= 0 else 0],
        new_tat if interval > 0 else None,
        used if per_day >= 0 else None,
    )
