"""Adaptive quality by network (image_router/policy/hints.py): which link the Client
Hints say, what format and quality that chooses where the client left them open, and a
route's opt-in to a smaller size and a faster tier — as tables, no sockets. The data
plane's use of them (image_router/decide.py) is checked through ``route_phase`` and
``arm_phase`` with an injected RNG and seed source."""

from __future__ import annotations

import random

import pytest

from image_router.ask import Ask
from image_router.backends.base import ImageRequest
from image_router.config import compile_text
from image_router.config.table import RouteHints
from image_router.decide import arm_phase, route_phase
from image_router.errors import ConfigError
from image_router.http.formats import FORMATS, accepted, negotiate
from image_router.policy.hints import (
    CONSTRAINED,
    FAST,
    FIELD,
    SLOW,
    Network,
    choose_format,
    choose_quality,
    downgrades,
    downsized,
)
from image_router.policy.match import RequestFacts

CHROMIUM_IMG = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


@pytest.mark.parametrize(
    ("headers", "link"),
    [
        ({}, FAST),
        ({"save-data": "on"}, CONSTRAINED),
        ({"save-data": "On; foo=bar"}, CONSTRAINED),
        ({"save-data": "off"}, FAST),
        ({"ect": "slow-2g"}, CONSTRAINED),
        ({"ect": "2g"}, CONSTRAINED),
        ({"ect": "3g"}, SLOW),
        ({"ect": "4g"}, FAST),
        ({"ect": "5g"}, FAST),  # unknown: absent
        ({"downlink": "0.05"}, CONSTRAINED),  # Chromium at 50 kbps (with ECT: 2g)
        ({"downlink": "0.1"}, SLOW),
        ({"downlink": "0.5"}, SLOW),  # Chromium at 500 kbps (with ECT: 3g)
        ({"downlink": "0.975"}, SLOW),
        ({"downlink": "1"}, FAST),
        ({"downlink": "1.45"}, FAST),  # headless Chromium's estimate with nothing measured
        ({"downlink": "10"}, FAST),
        ({"downlink": "nan"}, FAST),
        ({"downlink": "-1"}, FAST),
        ({"downlink": "fast"}, FAST),
        ({"ect": "4g", "downlink": "0.05"}, CONSTRAINED),  # the worst hint wins
        ({"ect": "4g", "downlink": "0.3"}, SLOW),
        ({"ect": "2g", "downlink": "10"}, CONSTRAINED),
        ({"ect": "3g", "downlink": "10"}, SLOW),
    ],
)
def test_the_link_is_the_worst_any_hint_says(headers: dict[str, str], link: str) -> None:
    assert Network.of(headers).link == link


@pytest.mark.parametrize(
    ("link", "accept", "expected"),
    [
        (FAST, "*/*", "png"),  # a fast link: as negotiated before
        (FAST, None, "png"),
        (SLOW, None, "jpeg"),  # no Accept allows anything: JPEG, which every client decodes
        (SLOW, "*/*", "jpeg"),
        (CONSTRAINED, "image/*", "jpeg"),
        (CONSTRAINED, "*/*", "jpeg"),  # never AVIF or WebP on a wildcard alone
        (CONSTRAINED, "image/png", "png"),  # only PNG allowed: PNG
        (CONSTRAINED, "image/png, image/jpeg;q=0, */*", "png"),  # JPEG refused by name
        (SLOW, "image/png, image/webp;q=0.5", "webp"),  # allowed, if not preferred: smaller
        (SLOW, "image/png, image/avif;q=0.1, image/webp", "avif"),
        (SLOW, CHROMIUM_IMG, "avif"),
        (CONSTRAINED, "image/webp, image/avif;q=0", "webp"),
        (CONSTRAINED, "image/jpeg", "jpeg"),
    ],
)
def test_a_slow_link_gets_the_smallest_format_accept_allows(link: str, accept: str | None, expected: str) -> None:
    negotiated = negotiate(accept)
    assert choose_format(link, accepted(accept), negotiated, FORMATS) == expected


def test_a_format_this_build_cannot_write_is_never_chosen() -> None:
    assert choose_format(SLOW, accepted("image/avif, image/png"), "png", ("png", "jpeg", "webp")) == "png"
    assert choose_format(SLOW, accepted("image/avif, image/webp, image/png"), "png", ("png", "webp")) == "webp"


@pytest.mark.parametrize(
    ("link", "asked", "expected"),
    [(FAST, None, None), (SLOW, None, 70), (CONSTRAINED, None, 50), (CONSTRAINED, 95, 95), (SLOW, 10, 10)],
)
def test_quality_follows_the_link_unless_the_client_named_one(link: str, asked: int | None, expected: int) -> None:
    assert choose_quality(link, asked) == expected


CAP = RouteHints(max_side=128)


@pytest.mark.parametrize(
    ("hints", "link", "size", "native", "expected"),
    [
        (CAP, CONSTRAINED, (512, 256), 256, (128, 64)),  # aspect kept, multiples of 8
        (CAP, CONSTRAINED, (None, None), 256, (128, 128)),  # no size asked: the tier's native one capped
        (CAP, CONSTRAINED, (None, None), 64, None),  # never larger than the tier makes
        (CAP, CONSTRAINED, (None, None), None, None),  # native side unknown: left alone
        (CAP, CONSTRAINED, (100, 100), 256, None),  # fits already
        (CAP, CONSTRAINED, (300, None), 256, (128, 128)),
        (CAP, SLOW, (512, 512), 256, None),  # only a constrained link
        (CAP, FAST, (512, 512), 256, None),
        (RouteHints(downgrade=True), CONSTRAINED, (512, 512), 256, None),  # the route caps nothing
        (None, CONSTRAINED, (512, 512), 256, None),  # the route did not opt in
    ],
)
def test_a_route_that_opts_in_caps_the_size_on_a_constrained_link(
    hints: RouteHints | None,
    link: str,
    size: tuple[int | None, int | None],
    native: int | None,
    expected: tuple[int, int] | None,
) -> None:
    assert downsized(hints, link, size[0], size[1], native) == expected


@pytest.mark.parametrize(
    ("hints", "link", "chain", "expected"),
    [
        (RouteHints(downgrade=True), CONSTRAINED, 2, True),
        (RouteHints(downgrade=True), SLOW, 2, False),
        (RouteHints(downgrade=True), CONSTRAINED, 1, False),  # no tier to start at
        (RouteHints(max_side=64), CONSTRAINED, 3, False),
        (None, CONSTRAINED, 3, False),
    ],
)
def test_a_route_that_opts_in_starts_at_its_fallback(
    hints: RouteHints | None, link: str, chain: int, expected: bool
) -> None:
    assert downgrades(hints, link, chain) is expected


ROUTES = """
backends: {fake: {url: "http://fake:1"}}
models:
  quality: {backend: fake, latency_hint_ms: 150, native_side: 256}
  preview: {backend: fake, latency_hint_ms: 40, native_side: 128}
  draft: {backend: fake, latency_hint_ms: 10, native_side: 64}
routes:
  - name: adaptive
    match: {intent: adaptive}
    model: quality
    fallback: [preview, draft]
    client_hints: {max_side: 96, downgrade: true}
default_route: {name: main, model: quality, fallback: [preview]}
"""
TABLE = compile_text(ROUTES, env={})


def _ask(intent: str | None, link: str | None, width: int | None = None) -> Ask:
    facts = RequestFacts.of("a cat", intent, None, {}, {FIELD: link} if link else None)
    return Ask.of(facts, ImageRequest(("a cat",), width=width, height=width), 0.0)


def _decide(intent: str | None, link: str | None, width: int | None = None) -> tuple[str, tuple[str, ...], int | None]:
    ask = _ask(intent, link, width)
    decision = arm_phase(route_phase(TABLE, ask), ask, random.Random(0), lambda n: (1,) * n, cached=False)
    return decision.choice.arm.model, decision.route.fallback, decision.request.width


@pytest.mark.parametrize(
    ("intent", "link", "width", "expected"),
    [
        ("adaptive", CONSTRAINED, None, ("preview", ("draft",), 96)),  # preview's 128 capped at 96
        ("adaptive", CONSTRAINED, 512, ("preview", ("draft",), 96)),
        ("adaptive", SLOW, None, ("quality", ("preview", "draft"), None)),
        ("adaptive", None, 512, ("quality", ("preview", "draft"), 512)),  # no hint (or another edge)
        (None, CONSTRAINED, 512, ("quality", ("preview",), 512)),  # a route that did not opt in
    ],
)
def test_the_data_plane_applies_the_routes_opt_in_only_for_a_constrained_link(
    intent: str | None, link: str | None, width: int | None, expected: tuple[str, tuple[str, ...], int | None]
) -> None:
    assert _decide(intent, link, width) == expected


def test_a_downgrade_without_a_fallback_is_refused_at_its_path() -> None:
    text = ROUTES.replace("    fallback: [preview, draft]\n", "")
    with pytest.raises(ConfigError) as info:
        compile_text(text, env={})
    assert any("routes[0].client_hints.downgrade: a downgrade needs a fallback" in str(i) for i in info.value.issues)


def test_an_unknown_client_hints_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        compile_text(ROUTES.replace("downgrade: true", "downgrade: true, critical: true"), env={})
    assert any("routes[0].client_hints.critical" in str(i) for i in info.value.issues)
