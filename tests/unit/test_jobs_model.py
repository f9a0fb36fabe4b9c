"""The job's state machine and the scheduling choice, as pure functions."""

from __future__ import annotations

import itertools

from image_router.jobs.model import TERMINAL, Job, fingerprint, new_id
from image_router.jobs.schedule import Pacer, pick


def job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "id": "imgjob_A", "tenant": "acme", "tier": "draft", "route": "default",
        "request": {"prompt": "p", "n": 1, "seeds": [1]}, "created_at": 100.0, "deadline_at": 200.0,
        "expires_at": 1000.0,
    }  # fmt: skip
    return Job(**{**fields, **changes})  # type: ignore[arg-type]


def test_ids_sort_by_time_and_fingerprints_ignore_key_order() -> None:
    """A later id sorts after an earlier one (listing order); a body's fingerprint does
    not depend on the order of its fields."""
    early, late = new_id(1.0, b"\xff" * 10), new_id(1.001, b"\x00" * 10)
    assert early < late and len(early) == len("imgjob_") + 26
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1}) != fingerprint({"a": 2, "b": [2]})


def test_claim_finish_and_every_later_transition_leave_a_terminal_state_alone() -> None:
    """Every sequence of transitions reaches at most one terminal state, and after it
    nothing changes (no path gives a job two terminal states)."""
    steps = {
        "claim": lambda j: j.claimed("r1", 110.0),
        "done": lambda j: j.finished("completed", 120.0, images=1),
        "fail": lambda j: j.finished("failed", 120.0, error={"code": "x"}),
        "cancel": lambda j: j.cancelled(115.0),
        "requeue": lambda j: j.requeued(2, 116.0),
        "expire": lambda j: j.expired(300.0),
        "hand_back": lambda j: j.handed_back(117.0),
    }
    for path in itertools.product(steps, repeat=4):
        current, terminal = job(), None
        for name in path:
            nxt = steps[name](current)
            if terminal is not None:
                assert nxt == current, f"{path}: {name} changed a {terminal} job"
            assert nxt.sequence in (current.sequence, current.sequence + 1)
            current = nxt
            if current.status in TERMINAL and terminal is None:
                terminal = current.status


def test_cancel_queued_running_and_finished() -> None:
    queued = job()
    assert queued.cancelled(1.0).status == "cancelled"
    running = job().claimed("r1", 110.0)
    assert running.status == "in_progress" and running.attempts == 1 and running.owner == "r1"
    cancelling = running.cancelled(111.0)
    assert cancelling.status == "cancelling"
    assert cancelling.finished("failed", 112.0).status == "cancelled", "a stopped attempt ends cancelled"
    assert cancelling.finished("completed", 112.0).status == "completed", "an image that finished first is kept"


def test_a_lost_job_is_requeued_until_its_attempts_run_out() -> None:
    once = job().claimed("r1", 110.0).requeued(2, 111.0)
    assert once.status == "queued" and once.owner is None and once.attempts == 1
    twice = once.claimed("r2", 112.0).requeued(2, 113.0)
    assert twice.status == "failed" and twice.error is not None and twice.error["code"] == "worker_lost"


def test_a_job_handed_back_at_shutdown_does_not_lose_an_attempt() -> None:
    back = job().claimed("r1", 110.0).handed_back(111.0)
    assert back.status == "queued" and back.attempts == 0 and back.owner is None
    assert job().claimed("r1", 110.0).cancelled(111.0).handed_back(112.0).status == "cancelled"


def test_pick_takes_the_fair_order_unless_a_deadline_is_near() -> None:
    a, b = job(id="imgjob_A", tag=2.0, deadline_at=1000.0), job(id="imgjob_B", tag=5.0, deadline_at=150.0)
    assert pick([a, b], now=100.0, expected_s=1.0, margin_s=10.0) == (a, "fair")
    assert pick([a, b], now=140.0, expected_s=1.0, margin_s=10.0) == (b, "urgent"), "its deadline is near"
    assert pick([b], now=151.0, expected_s=1.0, margin_s=10.0) is None, "past its deadline: the reaper expires it"


def test_share_mode_paces_jobs_to_their_minimum_share() -> None:
    """Idle: always; busy: a job of d seconds, then d*(1/share - 1) of rest."""
    pacer = Pacer(min_share=0.2)
    assert pacer.mode(idle=True, urgent=False, now=0.0) == "idle"
    assert pacer.mode(idle=False, urgent=False, now=0.0) == "share"
    pacer.ran("share", started=0.0, ended=2.0)
    assert pacer.mode(idle=False, urgent=False, now=9.9) is None
    assert pacer.mode(idle=False, urgent=True, now=9.9) == "urgent"
    assert pacer.mode(idle=False, urgent=False, now=10.0) == "share"
    assert Pacer(min_share=0.0).mode(idle=False, urgent=False, now=0.0) is None
