"""Adaptive quality by network: what the web's Client Hints change in an answer (pure).

A browser says how it is connected — ``Save-Data: on`` (the user asked for less data),
``ECT`` (the effective connection type: ``slow-2g``, ``2g``, ``3g``, ``4g``) and
``Downlink`` (Mbps, rounded by the browser) — and :class:`Network` reads them into one of
three links, the worse of what the hints say:

============== ======================================================================
``constrained`` ``Save-Data: on``, ``ECT`` ``slow-2g`` or ``2g``, or ``Downlink`` < 0.1
``slow``        ``ECT: 3g``, or ``Downlink`` < 1
``fast``        anything else, or no hint at all (nothing changes)
============== ======================================================================

What a link changes, and only where the client left it open:

- the **format** (:func:`choose_format`), on a slow or constrained link: the smallest
  one ``Accept`` allows — AVIF, then WebP only where ``Accept`` names them (a client
  that sends ``*/*`` may not decode them), then JPEG where ``Accept`` names it or a
  wildcard, else the format negotiated as before. An explicit ``format`` always wins.
- the **quality** of a lossy format (:func:`choose_quality`): :data:`QUALITY` by link;
  an explicit ``quality`` (or ``?q=``) always wins.
- on a constrained link, where the route opts in (``client_hints:`` in routes.yaml,
  :class:`~image_router.config.table.RouteHints`): a **smaller size**
  (:func:`downsized`: the longest side capped at ``max_side``, aspect kept) and a
  **faster tier** (:func:`downgrades`: the chain starts at its first fallback).

These change bytes on the wire and cost nothing a client asked for, so a cache must
keep the variants apart: :data:`VARY` names the hints an answer depends on and
:data:`ACCEPT_CH` asks a browser to send them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import NamedTuple

from image_router.config.table import RouteHints
from image_router.policy.size import fitted_size

__all__ = [
    "ACCEPT_CH",
    "CONSTRAINED",
    "FAST",
    "FIELD",
    "QUALITY",
    "SLOW",
    "VARY",
    "Network",
    "choose_format",
    "choose_quality",
    "downgrades",
    "downsized",
]

FAST, SLOW, CONSTRAINED = "fast", "slow", "constrained"
ECT_LINK = {"slow-2g": CONSTRAINED, "2g": CONSTRAINED, "3g": SLOW, "4g": FAST}
# Near Chromium's own ECT table (2g at most 70 kbps, 3g at most 700 kbps). Not higher:
# headless Chromium with no traffic measured yet says ECT 4g with Downlink 1.3-1.55 on
# loopback (seen in tests/integration/test_client_hints.py's request log), which must
# stay "fast".
CONSTRAINED_MBPS = 0.1  # below: a 50 KB image takes over 4 s
SLOW_MBPS = 1.0  # below: a 100 KB image takes over 0.8 s
QUALITY: Mapping[str, int | None] = {FAST: None, SLOW: 70, CONSTRAINED: 50}  # None: the default
SMALLEST_FIRST = ("avif", "webp", "jpeg")  # at the same quality, for photographs
ACCEPT_CH = "Save-Data, ECT, Downlink"
VARY = ("Save-Data", "ECT", "Downlink")
FIELD = "network"  # the request fact (``RequestFacts.fields``) an edge puts the link in


class Network(NamedTuple):
    """The hints a request carried (unknown or malformed ones read as absent)."""

    save_data: bool = False
    ect: str | None = None
    downlink: float | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Network:
        """From lower-case request headers. ``Save-Data`` is ``on`` or not (its
        parameters ignored, as the draft says); ``Downlink`` a finite number >= 0."""
        save = headers.get("save-data", "").split(";", 1)[0].strip().lower() == "on"
        ect = headers.get("ect", "").strip().lower()
        downlink: float | None = None
        raw = headers.get("downlink", "").strip()
        if raw:
            try:
                downlink = float(raw)
            except ValueError:
                downlink = None
            if downlink is not None and not (math.isfinite(downlink) and downlink >= 0):
                downlink = None
        return cls(save, ect if ect in ECT_LINK else None, downlink)

    @property
    def link(self) -> str:
        """``fast``, ``slow`` or ``constrained``: the worst any hint says."""
        if self.save_data:
            return CONSTRAINED
        links = [ECT_LINK[self.ect]] if self.ect is not None else []
        if self.downlink is not None:
            mbps = self.downlink
            links.append(CONSTRAINED if mbps < CONSTRAINED_MBPS else SLOW if mbps < SLOW_MBPS else FAST)
        for link in (CONSTRAINED, SLOW):
            if link in links:
                return link
        return FAST


def choose_format(link: str, accepted: Mapping[str, float], negotiated: str, available: Collection[str]) -> str:
    """The format of an answer whose client named none.

    ``accepted``: each image format ``Accept`` names, by its q-value, and ``"*"`` for
    ``image/*`` or ``*/*`` (an empty mapping: no ``Accept`` at all, which allows
    anything); ``negotiated``: what the q-values chose, served on a fast link;
    ``available``: what this build can write."""
    if link == FAST:
        return negotiated
    wildcard = accepted.get("*", 0.0) > 0 or not accepted
    for fmt in SMALLEST_FIRST:
        if fmt == negotiated:
            return negotiated  # nothing smaller is allowed
        named = accepted.get(fmt)
        allowed = named > 0 if named is not None else (wildcard and fmt == "jpeg")
        if allowed and fmt in available:
            return fmt
    return negotiated


def choose_quality(link: str, asked: int | None) -> int | None:
    """The quality of a lossy answer: the client's, else the link's (``None``: the default)."""
    return asked if asked is not None else QUALITY[link]


def downsized(
    hints: RouteHints | None, link: str, width: int | None, height: int | None, native: int | None
) -> tuple[int, int] | None:
    """The size to make on a route that caps it (``None``: as asked). Only on a
    constrained link; a request that names no size is made at the tier's ``native``
    side, so that is what is capped (unknown: left alone)."""
    if hints is None or hints.max_side is None or link != CONSTRAINED:
        return None
    if width is None and height is None:
        if native is None:
            return None
        width = height = native
    width = width or height
    height = height or width
    assert width is not None and height is not None
    return fitted_size(width, height, hints.max_side)


def downgrades(hints: RouteHints | None, link: str, chain: int) -> bool:
    """Whether the route's chain (``chain`` tiers long) starts at its first fallback:
    the route opts in, the link is constrained and there is a tier to start at."""
    return hints is not None and hints.downgrade and link == CONSTRAINED and chain > 1
