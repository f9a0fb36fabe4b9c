"""The data plane's pure decisions (image_router/decide.py): tenant steering, the effective
priority under a ceiling, previews under the tenant's rules, and ``explain`` deciding
exactly as serving does. No loop, no sockets: the RNG and the seed source are injected."""

from __future__ import annotations

import random

import pytest

from image_router.ask import Ask
from image_router.backends.base import ImageRequest
from image_router.config import compile_text
from image_router.config.table import Tenant
from image_router.decide import arm_phase, explain, previews, route_phase
from image_router.errors import Forbidden, InvalidRequest
from image_router.inference import InferOptions
from image_router.policy.match import RequestFacts

ROUTES = """
backends: {fake: {url: "http://fake:1"}}
models:
  quality: {backend: fake, latency_hint_ms: 150}
  preview: {backend: fake, latency_hint_ms: 40}
  draft: {backend: fake, latency_hint_ms: 10}
  canary: {backend: fake, latency_hint_ms: 10}
routes:
  - name: vip
    match: {intent: vip}
    model: quality
    priority: 1
    budget_ms: 3000
    fallback: [preview, draft]
  - name: ab
    match: {intent: ab}
    split:
      - {model: draft, weight: 100}
      - {model: canary, weight: 0, canary: true}
    sticky: header:x-user-id
    priority: 1
  - name: open
    match: {intent: open}
    model: quality
    budget_ms: 3000
    fallback: [preview, draft]
default_route: {name: main, model: preview, budget_ms: 2000, fallback: [draft]}
"""
TABLE = compile_text(ROUTES, env={})
STEERS = Tenant("steers", (), overrides=frozenset({"x-canary", "x-priority", "x-intent"}))
PLAIN = Tenant("plain", (), routes=frozenset({"main", "ab", "open"}))
CEILED = Tenant("ceiled", (), priority_ceiling=3, overrides=frozenset({"x-priority"}))


def ask(tenant: Tenant | None, intent: str | None = None, **headers: str) -> Ask:
    facts = RequestFacts.of("a cat", intent, None, {k.replace("_", "-"): v for k, v in headers.items()})
    return Ask.of(facts, ImageRequest(("a cat",)), 0.0, tenant=tenant)


def draw(n: int) -> tuple[int, ...]:
    return tuple(range(100, 100 + n))


def test_a_tenant_steers_only_what_it_may() -> None:
    allowed = route_phase(TABLE, ask(STEERS, x_intent="ab", x_canary="ALWAYS", x_priority="3"))
    assert (allowed.route.name, allowed.canary, allowed.priority) == ("ab", "always", 3)
    refused = route_phase(TABLE, ask(PLAIN, x_intent="ab", x_canary="always", x_priority="3"))
    assert (refused.route.name, refused.canary, refused.priority) == ("main", None, None)


def test_the_priority_ceiling_caps_the_effective_priority_not_only_a_sent_one() -> None:
    """A ceiling-3 tenant on a priority-1 route, sending no X-Priority, is served at 3
    (it once got the route's 1); sending 1 it also gets 3; a lower one it keeps."""
    assert route_phase(TABLE, ask(CEILED, "vip")).priority == 3
    assert route_phase(TABLE, ask(CEILED, "vip", x_priority="1")).priority == 3
    assert route_phase(TABLE, ask(CEILED, "main")).priority == 3  # no route level: the default is capped too
    assert route_phase(TABLE, ask(None, "vip")).priority == 1
    assert route_phase(TABLE, ask(STEERS, "vip", x_priority="2")).priority == 2


def test_a_route_the_tenant_may_not_use_is_refused_before_anything_else() -> None:
    with pytest.raises(Forbidden):
        route_phase(TABLE, ask(PLAIN, "vip"))


def test_previews_come_from_the_tenant_steered_route_with_its_seeds_and_priority() -> None:
    """A stream's previews are decided from the same routed value: a tenant that may not
    send X-Intent gets the default route's chain, never the header's route's."""
    sent = ask(PLAIN, x_intent="open", x_priority="1")
    routed = route_phase(TABLE, sent)
    main = arm_phase(routed, sent, random.Random(1), draw, cached=False)
    shown = previews(routed, main, 3, draw, cached=False)
    assert routed.route.name == "main" and [d.choice.arm.model for d in shown] == ["draft"]
    assert all(d.request.seeds == main.request.seeds == (100,) for d in shown)
    assert all(d.tenant == "plain" and d.priority is None and d.route.fallback == () for d in shown)
    steered = route_phase(TABLE, ask(STEERS, x_intent="open"))
    both = previews(steered, arm_phase(steered, sent, random.Random(1), draw, cached=False), 3, draw, cached=False)
    assert [d.choice.arm.model for d in both] == ["draft", "preview"]  # fastest first


def test_explain_decides_as_serving_does() -> None:
    """``X-Canary: ALWAYS`` (any case) forces the canary in serving; explain says the
    same (it once passed the raw header on and named the other arm)."""
    sent = ask(STEERS, x_intent="ab", x_canary="ALWAYS", x_user_id="u1")
    routed = route_phase(TABLE, sent)
    served = arm_phase(routed, sent, random.Random(1), draw, cached=False)
    explained = explain(TABLE, sent, lambda name: 0.01)
    assert served.choice.arm.model == explained["chosen"] == "canary"
    assert explained["priority"] == routed.priority == 1


def test_seeds_are_decided_once_and_only_where_the_edge_asks() -> None:
    kserve = Ask.of(RequestFacts.of("a cat", None, None, {}), ImageRequest(("a cat",)), 0.0, kserve=InferOptions())
    assert arm_phase(route_phase(TABLE, kserve), kserve, random.Random(1), draw, cached=False).request.seeds is None
    openai = ask(None)
    assert arm_phase(route_phase(TABLE, openai), openai, random.Random(1), draw, cached=False).request.seeds == (100,)


def test_a_tenants_cache_entries_are_its_own_in_keys_mode_unless_the_route_shares() -> None:
    keys = compile_text(
        ROUTES.replace(
            "routes:\n", "tenants: {mode: keys, tenants: {acme: {keys: [sk-acme-0123456789abcdef]}}}\nroutes:\n", 1
        )
        .replace(
            "    budget_ms: 3000\n    fallback: [preview, draft]\n  - name: ab",
            "    budget_ms: 3000\n    fallback: [preview, draft]\n    cache: {}\n  - name: ab",
        )
        .replace(
            "  - name: open\n    match: {intent: open}\n    model: quality\n",
            "  - name: open\n    match: {intent: open}\n    model: quality\n    cache: {scope: shared}\n",
        ),
        env={},
    )
    acme = keys.tenants[0]
    for intent, scope in (("vip", "acme"), ("open", "")):
        sent = ask(acme, intent)
        decided = arm_phase(route_phase(keys, sent), sent, random.Random(1), draw, cached=True)
        assert decided.cache is not None and decided.cache.scope == scope, intent
    sent = ask(None, "vip")  # open mode: one shared space
    assert (
        arm_phase(route_phase(TABLE, sent), sent, random.Random(1), draw, cached=True).cache is None
    )  # no cache block


def test_upscaling_is_bounded_by_output_pixels_before_anything_is_generated() -> None:
    big = "  - name: big\n    match: {intent: big}\n    model: draft\n    resize: upscale\n    limits: {max_n: 8}\n"
    table = compile_text(ROUTES.replace("  - name: ab\n", big + "  - name: ab\n"), env={})
    fine = Ask.of(RequestFacts.of("a", "big", None, {}), ImageRequest(("a",), width=2048, height=2048), 0.0)
    assert route_phase(table, fine).request.upscale
    too_many = Ask.of(RequestFacts.of("a", "big", None, {}), ImageRequest(("a",) * 4, width=2048, height=2048), 0.0)
    with pytest.raises(InvalidRequest) as info:
        route_phase(table, too_many)
    assert info.value.details["field"] == "n"
