"""Routing policy as pure functions: matching, weighted/sticky choice, budget planning."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from image_router.config import compile_text
from image_router.config.table import Arm, Matcher, Route
from image_router.errors import UnknownModel
from image_router.policy.budget import chain_for, plan_attempt
from image_router.policy.forecast import Forecast
from image_router.policy.match import RequestFacts, select_route
from image_router.policy.split import choose_arm, unit_hash

TABLE = compile_text(
    """
backends: {triton: {url: "http://127.0.0.1:1"}}
models:
  draft: {backend: triton}
  preview: {backend: triton}
  quality: {backend: triton}
  quality-v2: {backend: triton, triton_model: quality, version: "2"}
routes:
  - name: pinned-quality
    match: {model: quality}
    split: [{model: quality, weight: 80}, {model: quality-v2, weight: 20, canary: true}]
    sticky: header:X-User-Id
  - name: photo
    match: {prompt: "(?i)\\\\bphoto\\\\b"}
    model: quality
    fallback: [preview, draft]
  - name: beta-users
    match: {headers: {X-Beta: "yes", X-Client: {regex: "^mobile-"}}}
    model: preview
  - name: sketchy
    match: {intent: [sketch, draft]}
    model: draft
default_route: preview
""",
    env={},
)


def facts(prompt: str = "a cat", **kw: object) -> RequestFacts:
    return RequestFacts(prompt=prompt, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("f", "route"),
    [
        (facts("a PHOTO of a cat"), "photo"),
        (facts("photography"), "default"),
        (facts(intent="sketch"), "sketchy"),
        (facts(intent="draft"), "sketchy"),
        (facts(headers={"x-beta": "yes", "x-client": "mobile-ios"}), "beta-users"),
        (facts(headers={"x-beta": "yes", "x-client": "web"}), "default"),
        (facts(headers={"x-beta": "no", "x-client": "mobile-ios"}), "default"),
        (facts("a photo", intent="sketch"), "photo"),
        (facts("a photo", model="quality"), "pinned-quality"),
        (facts("a photo", model="draft"), "model:draft"),
        (facts("a photo", model="sketchy"), "sketchy"),
        (facts("a photo", model="auto"), "photo"),
    ],
)
def test_first_matching_route_wins(f: RequestFacts, route: str) -> None:
    assert select_route(TABLE, f).name == route


def test_unknown_alias_is_404_listing_what_exists() -> None:
    with pytest.raises(UnknownModel) as info:
        select_route(TABLE, facts(model="qualty"))
    assert info.value.status == 404
    assert "quality" in info.value.details["available"]


ROUTE = Route("r", Matcher(), (Arm("base", 90), Arm("canary", 10, canary=True)), 1000)


def test_weighted_split_is_within_statistical_bounds() -> None:
    rng = random.Random(1)
    counts = Counter(choose_arm(ROUTE, None, rng).arm.model for _ in range(20000))
    share = counts["canary"] / 20000
    assert abs(share - 0.10) < 4 * (0.1 * 0.9 / 20000) ** 0.5


def test_sticky_split_is_stable_and_weighted() -> None:
    rng = random.Random()
    first = {u: choose_arm(ROUTE, u, rng).arm.model for u in map(str, range(5000))}
    again = {u: choose_arm(ROUTE, u, random.Random(99)).arm.model for u in map(str, range(5000))}
    assert first == again, "the same user must land on the same side, whatever the RNG"
    share = sum(m == "canary" for m in first.values()) / 5000
    assert 0.08 < share < 0.12


def test_raising_canary_weight_only_moves_users_to_the_canary() -> None:
    """Rendezvous hashing: a roll-forward never moves a canary user back, nor base users
    between other arms; about the weight difference moves."""
    three = Route("r", Matcher(), (Arm("a", 60), Arm("b", 30), Arm("canary", 10, True)), 1000)
    rolled = Route("r", Matcher(), (Arm("a", 60), Arm("b", 30), Arm("canary", 40, True)), 1000)
    rng = random.Random()
    users = [str(u) for u in range(8000)]
    before = {u: choose_arm(three, u, rng).arm.model for u in users}
    after = {u: choose_arm(rolled, u, rng).arm.model for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert all(after[u] == "canary" for u in moved)
    assert all(after[u] == "canary" for u in users if before[u] == "canary")
    expected = 40 / 130 - 10 / 100
    assert abs(len(moved) / len(users) - expected) < 0.03


def test_canary_override_header() -> None:
    rng = random.Random(0)
    assert {choose_arm(ROUTE, None, rng, "always").arm.model for _ in range(50)} == {"canary"}
    assert {choose_arm(ROUTE, None, rng, "never").arm.model for _ in range(50)} == {"base"}
    assert choose_arm(ROUTE, "user-1", rng, "always").overridden


def test_unit_hash_is_pinned() -> None:
    """A golden value: SHA-256 with no per-process salt (unlike hash()), so every replica
    and every release puts a user in the same cohort. Changing it moves users."""
    assert unit_hash("route", "arm", "user-42") == 0.34132203498000796
    assert all(0 < unit_hash(str(i)) < 1 for i in range(1000))


SERVICE = {"quality": 2.5, "preview": 0.4, "draft": 0.1}


def idle(
    service_s: float, floor_s: float | None = None, probe: bool = False, ceiling_s: float | None = None
) -> Forecast:
    """An idle endpoint: it would take its service time (``floor_s`` at its fastest,
    ``ceiling_s`` at its slowest)."""
    floor = service_s if floor_s is None else floor_s
    ceiling = service_s if ceiling_s is None else ceiling_s
    return Forecast(service_s, floor, ceiling, service_s, floor, ahead=0, probe=probe)


IDLE = {name: idle(s) for name, s in SERVICE.items()}


@pytest.mark.parametrize(
    ("remaining", "model", "timeout", "skipped"),
    [
        (10.0, "quality", 9.5, ()),  # room for quality; reserve preview's + draft's forecast
        (3.05, "quality", 2.55, ()),  # just enough for quality plus the reserve
        (2.8, "preview", 2.7, (("quality", "no_room"),)),  # quality fits, but leaves no room
        (2.0, "preview", 1.9, (("quality", "slow"),)),  # quality cannot fit: skip it
        (0.45, "draft", 0.45, (("quality", "slow"), ("preview", "no_room"))),
        (0.3, "draft", 0.3, (("quality", "slow"), ("preview", "slow"))),
        (0.05, None, None, (("quality", "slow"), ("preview", "slow"), ("draft", "slow"))),
    ],
)
def test_plan_attempt_keeps_room_for_the_next_tier(
    remaining: float, model: str | None, timeout: float | None, skipped: tuple[tuple[str, str], ...]
) -> None:
    plan = plan_attempt(["quality", "preview", "draft"], remaining, IDLE.__getitem__)
    if model is None:
        assert plan.attempt is None
    else:
        assert plan.attempt is not None
        assert plan.attempt.model == model
        assert plan.attempt.timeout_s == pytest.approx(timeout)
        assert plan.attempt.last == (model == "draft")
    assert plan.skipped == skipped


def test_a_fallback_is_reserved_its_slowest_recent_time() -> None:
    """Under load a fallback runs slower than its typical time: the tier before it gives
    up early enough for the fallback's slowest recent answer."""
    loaded = {**IDLE, "draft": idle(0.04, ceiling_s=0.3)}
    plan = plan_attempt(["preview", "draft"], 2.0, loaded.__getitem__, margin_s=0.02)
    assert plan.attempt is not None and plan.attempt.timeout_s == pytest.approx(2.0 - 0.32)


def test_margin_is_added_to_the_reserve() -> None:
    plan = plan_attempt(["quality", "preview", "draft"], 10.0, IDLE.__getitem__, margin_s=0.05)
    assert plan.attempt is not None and plan.attempt.timeout_s == pytest.approx(9.4)


def test_a_queue_ahead_is_busy_not_slow() -> None:
    """Work queued ahead makes a tier miss: that is overload (``busy``), which the
    dispatcher sheds with 429 + Retry-After, not a budget failure."""
    queued = Forecast(expected_s=3.0, floor_s=1.5, ceiling_s=4.0, service_s=0.1, service_floor_s=0.05, ahead=20)
    plan = plan_attempt(["draft"], 0.5, {"draft": queued}.__getitem__)
    assert plan.attempt is None and plan.skipped == (("draft", "busy"),)
    plan = plan_attempt(["quality", "draft"], 4.0, {"quality": queued, "draft": IDLE["draft"]}.__getitem__)
    assert plan.attempt is not None and plan.attempt.model == "quality"  # 3.0 fits 4.0 - 0.1
    plan = plan_attempt(["quality", "draft"], 2.0, {"quality": queued, "draft": IDLE["draft"]}.__getitem__)
    assert plan.skipped == (("quality", "busy"),)


def test_the_last_tier_is_refused_only_when_even_its_floor_misses() -> None:
    """Expected 0.6 s in a 0.5 s budget, but the fastest recent service says 0.2 s: the
    last tier is tried with all the time left rather than refused."""
    noisy = {"draft": idle(0.6, floor_s=0.2)}
    plan = plan_attempt(["draft"], 0.5, noisy.__getitem__)
    assert plan.attempt is not None and plan.attempt.timeout_s == 0.5 and plan.attempt.last
    assert plan_attempt(["draft"], 0.15, noisy.__getitem__).skipped == (("draft", "slow"),)


def test_a_stale_tier_is_probed_when_its_floor_fits_and_the_fallback_keeps_its_room() -> None:
    stale = {"quality": idle(3.9, floor_s=2.8, probe=True), "preview": idle(0.4)}
    plan = plan_attempt(["quality", "preview"], 4.0, stale.__getitem__)
    assert plan.attempt is not None and plan.attempt.model == "quality" and plan.attempt.probe
    assert plan.attempt.timeout_s == pytest.approx(3.6)  # preview's 0.4 s stays reserved
    fresh = {**stale, "quality": idle(3.9, floor_s=2.8)}
    plan = plan_attempt(["quality", "preview"], 4.0, fresh.__getitem__)
    assert plan.attempt is not None and plan.attempt.model == "preview"
    assert plan.skipped == (("quality", "no_room"),)


def test_chain_has_no_repeats() -> None:
    assert chain_for("preview", ["preview", "draft", "draft"]) == ("preview", "draft")


def test_a_size_past_the_native_side_keeps_its_aspect_in_multiples_of_8() -> None:
    from image_router.policy.size import fitted_size

    assert fitted_size(256, 256, 256) is None
    assert fitted_size(1024, 1024, 128) == (128, 128)
    assert fitted_size(1536, 1024, 64) == (64, 40)
    assert fitted_size(1024, 1536, 256) == (168, 256)
    assert fitted_size(4000, 10, 64) == (64, 8)  # never below one multiple
