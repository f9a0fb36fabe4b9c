"""Spend budgets' store steps as pure functions, in integer micro-units.

The same arithmetic runs in the SQLite store (inside its transaction) and, line for
line, in the Redis store's Lua (:mod:`image_router.state.redis`); ``tests/unit/test_billing_store.py``
drives both with one sequence. A budget window is a counts hash ``{spent, reserved}``
named by its period (``b:{tenant}:day:20261206``: a new period is a new key, nothing is
ever reset in place); a reservation is a record ``i|amount|window keys`` under its
request's key, indexed by expiry so any later call returns what a crashed replica held.

``reserve`` — keys ``[index, reservation, *windows]``, args ``[ttl_ms, n, *limits(n),
*window_ttl_s(n), *quotes]``: purge up to 100 expired reservations of the index, then
pick the first tier ``i`` such that ``r = max(quotes[i:])`` fits every window
(``limit - spent - reserved``), and reserve ``r`` in each (so whichever later tier the
walk ends on is covered). Reply ``[i, r, *available after(n)]``; ``i = -1``: none fits
(nothing reserved). Asked again for the same reservation, it answers the first reply's
``i`` and ``r`` (a retried call does not reserve twice).

``settle`` — keys ``[index, reservation, done, *windows]``, args ``[actual, done_ttl_s,
*window_ttl_s(n)]``: once per ``done`` key (idempotent on retry, after a crash), add
``actual`` to every window's ``spent`` and give back what was reserved (if it has not
expired already). Reply ``1`` applied, ``0`` already settled.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PURGE_AT_MOST", "Reserved", "choose", "parse_record", "record"]

PURGE_AT_MOST = 100  # expired reservations given back per call


class Reserved(NamedTuple):
    tier: int  # the first tier that fits (-1: none)
    amount: int  # reserved in every window (0 when none fits)
    available: list[int]  # per window, after the reservation


def choose(limits: list[int], spent: list[int], reserved: list[int], quotes: list[int]) -> Reserved:
    """The first affordable tier of a chain, given each window's counters."""
    available = [lim - s - r for lim, s, r in zip(limits, spent, reserved, strict=True)]
    for i in range(len(quotes)):
        amount = max(quotes[i:])
        if all(amount <= a for a in available):
            return Reserved(i, amount, [a - amount for a in available])
    return Reserved(-1, 0, available)


def record(index: int, amount: int, windows: list[str]) -> bytes:
    return "|".join([str(index), str(amount), *windows]).encode()


def parse_record(raw: bytes) -> tuple[int, int, list[str]]:
    index, amount, *windows = raw.decode().split("|")
    return int(index), int(amount), windows
