"""The rollout's pure policy: the small-sample tests against published values, the
analysis' error rates measured by simulation, and every state transition."""

from __future__ import annotations

import random

import pytest

from image_router.config.table import Analysis, Rollout, Shadow
from image_router.policy.rollout import (
    ArmCounts,
    InvalidCommand,
    RolloutState,
    analyse,
    command,
    decide,
    initial,
    look,
)
from image_router.policy.significance import binomial_tail, newcombe_lower, wilson, z_for

ROLLOUT = Rollout(steps=(5, 25, 100), intervals_s=(60, 60, 60), analysis=Analysis(min_samples=30), digest="d")


def test_wilson_and_newcombe_match_published_values() -> None:
    """Newcombe (1998), table II, example (a): 56/70 - 48/80, 95 % interval
    0.0524 to 0.3339 by method 10; Wilson's interval for 0/10 tops out at 0.2775."""
    assert newcombe_lower(56, 70, 48, 80, 1.959964) == pytest.approx(0.0524, abs=5e-4)
    assert wilson(0, 10, 1.959964)[1] == pytest.approx(0.2775, abs=5e-4)
    assert z_for(0.95) == pytest.approx(1.6449, abs=1e-4)


def test_binomial_tail_is_exact() -> None:
    assert binomial_tail(1, 20, 0.05) == pytest.approx(1 - 0.95**20)
    assert binomial_tail(0, 5, 0.3) == 1.0 and binomial_tail(6, 5, 0.3) == 0.0
    assert binomial_tail(20, 20, 0.05) == pytest.approx(0.05**20)


def _arm(rng: random.Random, n: int, error_rate: float, latency_s: float, blank_rate: float = 0.0) -> ArmCounts:
    counts = ArmCounts()
    for _ in range(n):
        counts.requests += 1
        if rng.random() < error_rate:
            counts.errors += 1
            continue
        counts.add_latency(latency_s * rng.lognormvariate(0, 0.15))
        counts.images += 1
        counts.degenerate += rng.random() < blank_rate
    return counts


def _fail_share(trials: int, n: int, canary: dict[str, float], seed: int = 7) -> float:
    rng = random.Random(seed)
    analysis = Analysis(min_samples=n)
    fails = 0
    for _ in range(trials):
        base = _arm(rng, n, 0.02, 0.1, 0.01)
        can = _arm(rng, n, canary.get("errors", 0.02), 0.1 * canary.get("slower", 1.0), canary.get("blank", 0.01))
        fails += analyse(analysis, base, can).outcome == "fail"
    return fails / trials


def test_a_healthy_canary_fails_rarely_at_small_samples() -> None:
    """Same distributions on both arms, 40 requests each: well under 5 % wrongly failed."""
    assert _fail_share(300, 40, {}) <= 0.05


@pytest.mark.parametrize("canary", [{"errors": 0.3}, {"slower": 2.0}, {"blank": 0.4}], ids=["errors", "slow", "blank"])
def test_a_bad_canary_is_caught_at_small_samples(canary: dict[str, float]) -> None:
    """At the first look, 60 requests per arm: 30 % errors, twice the latency or 40 %
    blank images are caught in at least 95 % of trials."""
    assert _fail_share(200, 60, canary) >= 0.95


def test_looking_at_every_tick_does_not_inflate_false_failures() -> None:
    """A long step with a healthy canary (5 % errors and 5 % blank images on both arms,
    no margin allowed), checked after every 5 answers per arm up to 640, as a controller
    ticking for a week would. Judged only at the looks (40, 80, 160, 320, 640 answers)
    with the error rate split between them and the checks, at most 5 % of such steps
    wrongly fail; testing every tick at the full 5 % fails several times as many."""
    rng = random.Random(11)
    analysis = Analysis(min_samples=40, max_error_rate_increase=0, max_downgrade_rate_increase=0,
                        max_degenerate_rate_increase=0)  # fmt: skip
    z = z_for(0.95)
    looked_fails = naive_fails = 0
    trials = 150
    for _ in range(trials):
        base, can = ArmCounts(), ArmCounts()
        last_look, looked_failed, naive_failed = -1, False, False
        for _tick in range(128):
            base.merge(_arm(rng, 5, 0.05, 0.1, 0.05))
            can.merge(_arm(rng, 5, 0.05, 0.1, 0.05))
            k = look(analysis, base, can)
            if k is not None and k > last_look:
                last_look = k
                looked_failed |= analyse(analysis, base, can, k).outcome == "fail"
            if k is not None:  # the naive way: every rate at the full 5 %, every tick
                naive_failed |= any(
                    newcombe_lower(k_c, n_c, k_b, n_b, z) > 0
                    for k_c, n_c, k_b, n_b in ((can.errors, can.requests, base.errors, base.requests),
                                               (can.degenerate, can.images, base.degenerate, base.images))
                )  # fmt: skip
        looked_fails += looked_failed
        naive_fails += naive_failed
    assert looked_fails / trials <= 0.05
    assert naive_fails / trials > 0.15 and naive_fails > 4 * looked_fails, (naive_fails, looked_fails)


def test_too_few_samples_wait_and_every_decision_carries_its_numbers() -> None:
    rng = random.Random(1)
    assert analyse(Analysis(min_samples=50), _arm(rng, 60, 0, 0.1), _arm(rng, 10, 1.0, 0.1)).outcome == "wait"
    verdict = analyse(Analysis(min_samples=20), _arm(rng, 60, 0, 0.1), _arm(rng, 30, 1.0, 0.1))
    assert verdict.outcome == "fail" and "error_rate" in verdict.reason
    record = verdict.as_dict()
    assert record["samples"] == {"baseline": 60, "canary": 30}
    errors = next(c for c in record["checks"] if c["name"] == "error_rate")
    assert errors["canary"] == 1.0 and errors["baseline"] == 0.0 and errors["statistic"] > 0.5 and errors["failed"]


def test_counts_survive_the_store_and_merge() -> None:
    a = _arm(random.Random(2), 50, 0.1, 0.2)
    back = ArmCounts.from_fields({k: str(v) for k, v in a.fields().items()})  # type: ignore[misc]
    assert back == a
    back.merge(a)
    assert back.requests == 100 and back.timed == 2 * a.timed
    assert 0.15 < (a.quantile(0.5) or 0) < 0.25


PASS = analyse(Analysis(min_samples=1), _arm(random.Random(3), 5, 0, 0.1), _arm(random.Random(4), 5, 0, 0.1))
FAIL = analyse(Analysis(min_samples=1), _arm(random.Random(3), 40, 0, 0.1), _arm(random.Random(4), 40, 1.0, 0.1))
WAIT = analyse(Analysis(min_samples=100), ArmCounts(), ArmCounts())


def test_a_passing_step_advances_only_after_its_interval_and_promotes_at_the_end() -> None:
    state = initial(ROLLOUT, 0.0)
    assert (state.status, state.weight) == ("running", 5)
    assert decide(ROLLOUT, state, PASS, 59.0) is None
    assert decide(ROLLOUT, state, WAIT, 61.0) is None  # too few samples: the step is held
    weights = [state.weight]
    now = 0.0
    while state.status == "running":
        now += 61
        nxt = decide(ROLLOUT, state, PASS, now)
        assert nxt is not None and nxt.window == state.window + 1
        state = nxt
        weights.append(state.weight)
    assert weights == [5, 25, 100, 100] and state.status == "promoted"
    assert state.judged_against == 1, "at 100 % the canary is judged against the 25 % step's baseline (window 1)"
    assert [d["action"] for d in state.decisions] == ["advance", "advance", "promote"]
    assert all(d["samples"] for d in state.decisions)
    held = Rollout(steps=(5, 50), intervals_s=(1, 1), analysis=Analysis(), digest="h", on_success="hold")
    state = initial(held, 0)
    state = decide(held, decide(held, state, PASS, 2) or state, PASS, 4) or state
    assert (state.status, state.weight) == ("held", 50)


def test_a_failure_rolls_back_at_once_or_pauses() -> None:
    state = initial(ROLLOUT, 0.0)
    back = decide(ROLLOUT, state, FAIL, 1.0)
    assert back is not None and (back.status, back.weight) == ("rolled_back", 0.0)
    assert back.decisions[-1]["checks"] and back.decisions[-1]["from_weight"] == 5
    assert decide(ROLLOUT, back, PASS, 500.0) is None  # over: nothing moves it again
    pausing = Rollout(steps=(5,), intervals_s=(1,), analysis=Analysis(), digest="p", on_failure="pause")
    paused = decide(pausing, initial(pausing, 0), FAIL, 1)
    assert paused is not None and (paused.status, paused.weight) == ("paused", 5)


def test_a_change_takes_effect_at_one_moment_for_every_replica() -> None:
    """Decided at t=100 with a 0.6 s switch: until 100.6 every replica still serves the
    old weight, then the new one; the record says when."""
    state = initial(ROLLOUT, 0.0, delay_s=0.6)
    assert (state.weight_at(0.5), state.weight_at(0.6)) == (0.0, 5)
    nxt = decide(ROLLOUT, state, PASS, 100.0, delay_s=0.6)
    assert nxt is not None
    assert (nxt.weight_at(100.59), nxt.weight_at(100.6)) == (5, 25)
    assert nxt.decisions[-1]["effective_at"] == 100.6 and nxt.decisions[-1]["from_weight"] == 5
    assert decide(ROLLOUT, nxt, PASS, 160.0) is None, "a step's interval counts from when it took effect"
    back = decide(ROLLOUT, nxt, FAIL, 100.3, delay_s=0.6)  # failed before the switch: from what is served
    assert back is not None and back.previous_weight == 5 and back.weight_at(100.9) == 0


def test_shadow_comes_first_at_weight_zero() -> None:
    shadowed = Rollout(steps=(10, 100), intervals_s=(5, 5), analysis=Analysis(), digest="s", shadow=Shadow(0.5, 30))
    state = initial(shadowed, 0)
    assert (state.status, state.step, state.weight) == ("shadow", -1, 0)
    assert decide(shadowed, state, PASS, 10) is None
    state = decide(shadowed, state, PASS, 31) or state
    assert (state.status, state.step, state.weight) == ("running", 0, 10)


def test_operator_commands() -> None:
    state = initial(ROLLOUT, 0.0)
    paused = command(state, "pause", 1)
    assert decide(ROLLOUT, paused, PASS, 100) is None, "a paused rollout does not advance"
    rolled = decide(ROLLOUT, paused, FAIL, 100)
    assert rolled is not None and rolled.status == "rolled_back", "but a failing one is still rolled back"
    resumed = command(paused, "resume", 2)
    assert resumed.status == "running" and resumed.window == paused.window + 1
    assert command(resumed, "promote", 3).weight == 100
    assert command(resumed, "abort", 3).weight == 0
    for action, st in (("resume", resumed), ("pause", command(resumed, "abort", 3)), ("jump", resumed)):
        with pytest.raises(InvalidCommand):
            command(st, action, 4)
    assert RolloutState.from_bytes(resumed.to_bytes()) == resumed


def test_live_weights_move_sticky_users_only_towards_the_canary() -> None:
    """Two baselines (60/40 in the file) and a rollout's canary: as the live weight
    rises, a user either stays where they were or moves to the canary, never between
    baselines or back; at 0 every user is on a baseline, at 100 on the canary."""
    from image_router.config.table import Arm, Matcher, Route
    from image_router.policy.rollout import reweighted
    from image_router.policy.split import choose_arm

    canary = Arm("v2", 1.0, True, ROLLOUT)
    route = Route("r", Matcher(), (Arm("a", 60), Arm("b", 40), canary), 1000.0, sticky=("header", "x-user-id"))
    users = [f"user-{i}" for i in range(2000)]
    rng = random.Random(0)
    before = {u: choose_arm(reweighted(route, canary, 0.0), u, rng).arm.model for u in users}
    assert set(before.values()) == {"a", "b"}
    assert 0.55 < sum(v == "a" for v in before.values()) / len(users) < 0.65
    for weight in (1, 5, 25, 50, 100):
        now = {u: choose_arm(reweighted(route, canary, float(weight)), u, rng).arm.model for u in users}
        moved = {u for u in users if now[u] != before[u]}
        assert all(now[u] == "v2" for u in moved), "only moves to the canary"
        share = sum(v == "v2" for v in now.values()) / len(users)
        assert abs(share - weight / 100) < 0.03, (weight, share)
        before = now
    assert set(before.values()) == {"v2"}
