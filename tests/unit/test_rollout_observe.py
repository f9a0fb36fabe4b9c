"""How one answer counts in a rollout (``LiveRollout.observe``, docs/rollouts.md "What
counts"), and a step that fails on its downgrade rate alone.

- a fresh answer by the arm's own model: a request, a latency sample, its images;
- an answer passed on because the arm was slow, busy, full, timed out, had no room or
  waited out its queue: a *downgrade*, not an error;
- any other fallback (an open circuit, an error) or a 5xx: an *error*;
- a cache hit, a coalesced answer and the client's own 4xx: not counted at all.
"""

from __future__ import annotations

import numpy as np
import pytest

from image_router.backends.base import EncodedImages, ImageResult
from image_router.config.table import Analysis, Arm, Matcher, Model, Rollout, Route
from image_router.errors import BackendRejected, BackendUnavailable, BudgetExhausted, InvalidRequest, RouterError
from image_router.policy.rollout import ArmCounts, RolloutState, analyse, decide, initial
from image_router.rollouts.live import LiveRollout
from image_router.served import Served

ROLLOUT = Rollout(steps=(10, 50, 100), intervals_s=(60, 60, 60), analysis=Analysis(min_samples=30), digest="d")
CANARY = Arm("v2", 10.0, canary=True, rollout=ROLLOUT)
BASELINE = Arm("v1", 90.0)
ROUTE = Route("pictures", Matcher(), (BASELINE, CANARY), 5000.0, fallback=("draft",))
MODELS = {name: Model(name, "triton", name, "1", 100.0) for name in ("v1", "v2", "draft")}
PIXELS = np.full((1, 8, 8, 3), 128, np.uint8)


def live() -> LiveRollout:
    rollout = LiveRollout("pictures", ROLLOUT, canary="v2", baseline="v1")
    rollout.state = initial(ROLLOUT, 0.0)
    return rollout


def served(model: str, fallback: tuple[tuple[str, str], ...] = (), cache: str | None = None) -> Served:
    result = ImageResult(PIXELS, "1")
    return Served(result, ROUTE, MODELS[model], 1 + len(fallback), fallback, model == "v2", 0.0, 0.2, 0.25,
                  cache=cache)  # fmt: skip


def counts(rollout: LiveRollout, side: str) -> ArmCounts:
    assert rollout.state is not None
    return rollout.pending.get((rollout.state.window, side), ArmCounts())


def test_a_fresh_answer_of_the_arm_is_a_sample_with_its_latency_and_images() -> None:
    rollout = live()
    side = rollout.observe(CANARY, served("v2"))
    assert side is not None and side[0] == "canary"
    c = counts(rollout, "c")
    assert (c.requests, c.errors, c.downgrades, c.images, c.timed) == (1, 0, 0, 1, 1)
    assert rollout.observe(BASELINE, served("v1")) is not None
    assert counts(rollout, "b").requests == 1 and counts(rollout, "c").requests == 1


@pytest.mark.parametrize("cache", ["HIT", "COALESCED"])
def test_a_stored_answer_is_not_counted(cache: str) -> None:
    rollout = live()
    assert rollout.observe(CANARY, served("v2", cache=cache)) is None
    assert rollout.observe(BASELINE, served("v1", cache=cache)) is None
    assert counts(rollout, "c") == ArmCounts() and counts(rollout, "b") == ArmCounts()
    rollout.observe(CANARY, served("v2", cache="MISS"))  # a miss was made now: it counts
    assert counts(rollout, "c").requests == 1


@pytest.mark.parametrize("error", [InvalidRequest("bad size"), BackendRejected("the model refused the input")])
def test_the_clients_own_4xx_is_not_counted(error: RouterError) -> None:
    rollout = live()
    assert rollout.observe(CANARY, None, error) is None
    assert counts(rollout, "c") == ArmCounts()


@pytest.mark.parametrize("error", [BackendUnavailable("down"), BudgetExhausted("late")])
def test_a_5xx_is_an_error(error: RouterError) -> None:
    rollout = live()
    rollout.observe(CANARY, None, error)
    c = counts(rollout, "c")
    assert (c.requests, c.errors, c.downgrades) == (1, 1, 0)


@pytest.mark.parametrize("why", ["slow", "busy", "full", "timeout", "no_room", "queue_timeout"])
def test_a_fallback_because_the_arm_was_slow_or_busy_is_a_downgrade(why: str) -> None:
    rollout = live()
    assert rollout.observe(CANARY, served("draft", fallback=(("v2", why),))) is None
    c = counts(rollout, "c")
    assert (c.requests, c.errors, c.downgrades, c.images, c.timed) == (1, 0, 1, 0, 0)


@pytest.mark.parametrize("why", ["circuit_open", "error", "unavailable"])
def test_a_fallback_because_the_arm_failed_is_an_error(why: str) -> None:
    rollout = live()
    rollout.observe(BASELINE, served("draft", fallback=(("v1", why),)))
    b = counts(rollout, "b")
    assert (b.requests, b.errors, b.downgrades) == (1, 1, 0)


def test_a_timeout_and_then_an_error_on_the_same_arm_is_an_error() -> None:
    """Only when every reason the arm gave is a downgrade reason is it a downgrade."""
    rollout = live()
    rollout.observe(CANARY, served("draft", fallback=(("v2", "timeout"), ("v2", "error"))))
    assert counts(rollout, "c").errors == 1 and counts(rollout, "c").downgrades == 0


def test_a_hosted_answer_counts_without_decoding_its_images() -> None:
    rollout = live()
    hosted = ImageResult(None, "1", encoded=EncodedImages(("aGk=",), "png"))
    answer = Served(hosted, ROUTE, MODELS["v2"], 1, (), True, 0.0, 0.2, 0.25)
    assert rollout.observe(CANARY, answer) is None
    c = counts(rollout, "c")
    assert (c.requests, c.timed, c.images) == (1, 1, 0)


def test_nothing_is_counted_once_the_rollout_is_over() -> None:
    rollout = live()
    assert rollout.state is not None
    rollout.state.status = "promoted"
    assert rollout.observe(CANARY, served("v2")) is None and rollout.pending == {}


def _arm(requests: int, downgrades: int) -> ArmCounts:
    counts = ArmCounts(requests=requests, downgrades=downgrades, images=requests - downgrades)
    for _ in range(requests - downgrades):
        counts.add_latency(0.1)
    return counts


def test_a_step_fails_on_its_downgrade_rate_alone_and_rolls_back() -> None:
    """The canary makes as many errors (none), as healthy images and as fast as the
    baseline, but passes 40 % of its requests on: only the downgrade check fails, and the
    rollout goes back to 0 at once."""
    analysis = Analysis(min_samples=30)
    verdict = analyse(analysis, _arm(60, 0), _arm(60, 24))
    assert verdict.outcome == "fail", verdict
    assert [c.name for c in verdict.checks if c.failed] == ["downgrade_rate"], verdict.as_dict()
    state = initial(ROLLOUT, 0.0)
    after = decide(ROLLOUT, state, verdict, now=10.0)
    assert isinstance(after, RolloutState) and (after.status, after.weight) == ("rolled_back", 0.0)
    assert after.decisions[-1]["action"] == "rollback" and "downgrade_rate" in after.decisions[-1]["reason"]
    # the same counts with the downgrades within the margin pass
    assert analyse(analysis, _arm(60, 0), _arm(60, 0)).outcome == "pass"
