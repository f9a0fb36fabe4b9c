"""Budget decisions from live queues (image_router.policy.forecast + plan_attempt), on a fake
clock. The three stories measured under load — a thumbnail route refused after one
slow answer, one frozen replica downgrading everyone, one cold start downgrading a
route for a minute — each replayed against the policy, plus the queue arithmetic."""

from __future__ import annotations

import pytest

from image_router.backends.replicas import ReplicaSet
from image_router.config.table import Backend, Model
from image_router.policy.budget import plan_attempt
from image_router.policy.forecast import Forecast, Lane, ServiceTime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serve(lane: Lane, clock: Clock, seconds: float) -> None:
    """One request through an idle lane, answered after ``seconds``."""
    ticket = lane.send(clock.now)
    clock.now += seconds
    lane.done(ticket, clock.now, ok=True)


# -- the estimator ---------------------------------------------------------------------


def test_one_outlier_never_moves_the_estimate_two_agreeing_samples_do() -> None:
    est = ServiceTime(prior_s=0.12)
    for s in (0.08, 0.08, 0.9):
        est.add(s, 0.0)
    assert est.typical_s == 0.08
    est.add(0.9, 0.0)
    assert est.typical_s == 0.9, "a real shift is followed after two samples"
    est.add(0.08, 0.0)
    est.add(0.08, 0.0)
    assert est.typical_s == 0.08, "and back after two"
    assert est.floor_s == 0.08


def test_the_hint_fills_in_until_samples_agree_and_seeds_the_floor() -> None:
    est = ServiceTime(prior_s=3.0)
    assert est.typical_s == 3.0 and est.floor_s == pytest.approx(0.3)
    est.add(0.5, 0.0)  # a faster machine than the hint says
    assert est.typical_s == 3.0
    est.add(0.5, 0.0)
    assert est.typical_s == 0.5


def test_a_censored_timeout_counts_only_when_it_says_more_than_the_estimate() -> None:
    est = ServiceTime(prior_s=0.1)
    est.censored(0.05, 0.0)  # given up after 50 ms: says nothing new
    assert list(est.recent) == []
    est.censored(0.4, 0.0)  # it needed more than 0.4 s: counted as a little more
    assert list(est.recent) == [0.5] and est.typical_s == 0.1


# -- the queue model ---------------------------------------------------------------------


def test_a_request_waits_for_what_is_executing_and_queued_ahead() -> None:
    clock = Clock()
    lane = Lane(prior_s=3.0)
    lane.send(clock.now)
    lane.send(clock.now)
    clock.now += 1.0
    f = lane.forecast(clock.now)
    # 2 s left of the running one, 3 s for the queued one, then its own 3 s
    assert f.expected_s == pytest.approx(8.0) and f.ahead == 2
    assert f.floor_s == pytest.approx(0.0 + 0.3 + 0.3)  # at the floor (a tenth of the hint)
    assert lane.forecast(clock.now, extra_ahead=1).expected_s == pytest.approx(11.0)


def test_several_instances_drain_in_parallel() -> None:
    clock = Clock()
    lane = Lane(prior_s=1.0, servers=2)
    for _ in range(3):
        lane.send(clock.now)
    assert lane.forecast(clock.now).expected_s == pytest.approx(2.0)  # third starts at 1 s; we at 1 s
    assert Lane(prior_s=1.0, servers=None).forecast(clock.now).expected_s == 1.0


def test_abandoned_work_keeps_the_instance_busy_queued_or_running() -> None:
    """Triton cannot stop a running request, and without a queue policy it also runs a
    queued one the gateway gave up on: both still count, until they should be done."""
    clock = Clock()
    lane = Lane(prior_s=1.0)
    running = lane.send(clock.now)
    queued = lane.send(clock.now)
    clock.now += 0.5
    lane.abandon(queued, clock.now)
    assert lane.forecast(clock.now).ahead == 2 and lane.forecast(clock.now).expected_s == pytest.approx(2.5)
    lane.abandon(running, clock.now)  # ran 0.5 s of 1 s: about 0.5 s left, then the queued one
    f = lane.forecast(clock.now)
    assert f.ahead == 2 and f.expected_s == pytest.approx(0.5 + 1.0 + 1.0)
    clock.now += 0.6
    assert lane.forecast(clock.now).ahead == 1, "the first is assumed done, the queued one runs"
    clock.now += 1.0
    assert lane.forecast(clock.now).ahead == 0


def test_cancelled_work_frees_its_place_at_once() -> None:
    """Over gRPC the gateway's cancel reaches Triton: a queued request leaves the queue and
    a running one stops within a step, so neither is still ahead of the next request."""
    clock = Clock()
    lane = Lane(prior_s=1.0)
    running = lane.send(clock.now)
    queued = lane.send(clock.now)
    waiting = lane.send(clock.now)
    clock.now += 0.5
    lane.cancel(queued, clock.now)
    assert lane.forecast(clock.now).ahead == 2 and lane.forecast(clock.now).expected_s == pytest.approx(1.5 + 1.0)
    lane.cancel(running, clock.now)  # the waiting one runs now: one ahead, about 1 s
    f = lane.forecast(clock.now)
    assert f.ahead == 1 and f.expected_s == pytest.approx(1.0 + 1.0)
    lane.done(waiting, clock.now + 1.0, ok=True)
    assert lane.forecast(clock.now + 1.0).ahead == 0
    assert lane.estimate.typical_s == pytest.approx(1.0), "a guessed start gives no sample"


def test_the_service_sample_excludes_the_time_spent_queued() -> None:
    clock = Clock()
    lane = Lane(prior_s=1.0)
    first, second = lane.send(clock.now), lane.send(clock.now)
    clock.now += 0.2
    lane.done(first, clock.now, ok=True)
    clock.now += 0.2
    lane.done(second, clock.now, ok=True)  # waited 0.2 s, then 0.2 s of service
    assert list(lane.estimate.recent) == [pytest.approx(0.2), pytest.approx(0.2)]


def test_a_start_guessed_from_abandoned_work_gives_no_sample() -> None:
    """Behind abandoned work the next request's start is a guess; if the guess was late,
    "service time" would read as a fraction of a millisecond (measured: 0.5 ms floors)."""
    clock = Clock()
    lane = Lane(prior_s=0.4)
    stuck = lane.send(clock.now)
    queued = lane.send(clock.now)
    clock.now += 0.3
    lane.abandon(stuck, clock.now)  # assumed to run on until about now + 0.1
    clock.now += 0.45
    lane.done(queued, clock.now, ok=True)  # its start was guessed: no sample
    assert list(lane.estimate.answered) == []
    serve(lane, clock, 0.4)
    assert list(lane.estimate.answered) == [pytest.approx(0.4)]


def test_the_ceiling_is_the_slowest_recent_answer_never_a_timeout() -> None:
    est = ServiceTime(prior_s=0.1)
    for s in (0.04, 0.05, 0.3):
        est.add(s, 0.0)
    est.censored(2.0, 0.0)
    assert est.ceiling_s == 0.3 and est.floor_s == 0.04


# -- story 1: a thumbnail route refused after one slow answer ----------------------------


def test_one_slow_thumbnail_does_not_get_the_next_ones_refused() -> None:
    """Measured: one draft attempt timed out while the CPU was busy with photos, was
    recorded as twice its timeout, and the next 22 of 27 thumbnails were refused with
    zero attempts while draft was answering well inside 500 ms."""
    clock = Clock()
    draft = Lane(prior_s=0.12)
    for _ in range(5):
        serve(draft, clock, 0.08)
    late = draft.send(clock.now)
    clock.now += 0.5
    draft.abandon(late, clock.now)  # timed out: still running in Triton a little longer
    clock.now += 0.05
    plan = plan_attempt(["draft"], 0.5, lambda m: draft.forecast(clock.now))
    assert plan.attempt is not None and plan.attempt.model == "draft" and plan.attempt.timeout_s == 0.5
    clock.now += 1.0
    f = draft.forecast(clock.now)
    assert f.ahead == 0 and f.expected_s == pytest.approx(0.08), "the next one is planned as usual"


def test_a_tier_skipped_on_a_bad_estimate_is_probed_again_within_seconds() -> None:
    """A skipped tier produces no samples; a stale idle lane is offered as a probe, and
    two good probes restore it."""
    clock = Clock()
    quality, preview = Lane(prior_s=3.0), Lane(prior_s=0.4)
    for _ in range(3):
        serve(quality, clock, 3.9)  # a slow spell (say, the CPU shared with a burst)
    lanes = {"quality": quality, "preview": preview}

    def plan() -> str | None:
        p = plan_attempt(["quality", "preview"], 4.0, lambda m: lanes[m].forecast(clock.now), 0.02)
        return p.attempt.model if p.attempt else None

    assert plan() == "preview"  # 3.9 s does not leave preview its 0.42 s
    probes = 0
    while quality.estimate.typical_s != 3.0 and clock.now < 1100:
        clock.now += 0.1
        if plan() == "quality":
            probes += 1
            serve(quality, clock, 3.0)  # the probe finds quality fast again
    assert probes == 2, "two agreeing samples restore the estimate"
    assert clock.now - 1011.7 < 15.0, "quality back within seconds, not when a minute's window expires"
    assert plan() == "quality"


# -- story 2: one frozen replica downgrades everyone -----------------------------------


def test_timeouts_on_a_frozen_replica_do_not_make_the_model_look_slow_on_the_other() -> None:
    clock = Clock()
    spec = Backend("t", "triton", "http://a:1", replicas=("http://a:1", "http://b:1"))
    replicas = ReplicaSet(spec, clock)
    draft = Model("draft", "t", "draft", None, 150.0)
    a, b = replicas.replicas
    for _ in range(3):  # three requests caught on the frozen replica, each timed out
        ticket = a.lane(draft).send(clock.now)
        clock.now += 1.4
        a.lane(draft).abandon(ticket, clock.now)
    forecast = replicas.forecast(draft)
    assert forecast is not None and forecast.expected_s == pytest.approx(0.15), "b's own, untouched"
    assert replicas.choose(draft, set()) is b
    noop = Model("noop", "t", "noop", None, 20.0)
    plan = plan_attempt(["draft", "noop"], 1.5, {"draft": forecast, "noop": replicas.forecast(noop)}.__getitem__)
    assert plan.attempt is not None and plan.attempt.model == "draft" and plan.skipped == ()


# -- story 3: one cold start downgrades a route for a minute ---------------------------


def test_one_cold_start_does_not_downgrade_the_route() -> None:
    """After `make up` the first photo took 3.9 s on quality (3.0 s steady): that one
    sample made the photo route answer `quality:slow` for the next minute."""
    clock = Clock()
    lanes = {"quality": Lane(3.0), "preview": Lane(0.5), "draft": Lane(0.12)}
    serve(lanes["quality"], clock, 3.9)
    plan = plan_attempt(["quality", "preview", "draft"], 4.0, lambda m: lanes[m].forecast(clock.now), 0.02)
    assert plan.attempt is not None and plan.attempt.model == "quality" and plan.skipped == ()


def test_a_forecast_is_a_plain_value() -> None:
    f = Forecast(1.0, 0.5, 2.0, 1.0, 0.5, ahead=0)
    assert not f.probe and f == Forecast(1.0, 0.5, 2.0, 1.0, 0.5, 0)
