"""Circuit breaker, retry budget and admission gate: state machines over an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from image_router.admission import AdmissionGate
from image_router.config.table import CircuitPolicy
from image_router.policy.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from image_router.policy.retry_budget import RetryBudget


def test_circuit_opens_after_consecutive_failures_then_probes_once_and_closes() -> None:
    breaker = CircuitBreaker(CircuitPolicy(consecutive_failures=3, cooldown_s=5))
    for t in range(2):
        breaker.record(t, False)
    assert breaker.state == CLOSED and breaker.allow(2)
    breaker.record(2, False)
    assert breaker.state == OPEN
    assert not breaker.allow(3) and not breaker.would_allow(6.9)
    assert breaker.would_allow(7.0)
    assert breaker.allow(7.0) and breaker.state == HALF_OPEN, "one probe after the cooldown"
    assert not breaker.allow(7.1), "only one probe at a time"
    breaker.record(7.5, True)
    assert breaker.state == CLOSED and breaker.allow(7.6)


def test_failed_probe_reopens_for_another_cooldown() -> None:
    breaker = CircuitBreaker(CircuitPolicy(consecutive_failures=1, cooldown_s=5))
    breaker.record(0, False)
    assert breaker.allow(5)
    breaker.record(5.1, False)
    assert breaker.state == OPEN and not breaker.allow(9) and breaker.allow(10.2)
    assert breaker.opened_count == 2


def test_circuit_opens_on_failure_ratio_over_the_window() -> None:
    breaker = CircuitBreaker(CircuitPolicy(consecutive_failures=100, failure_ratio=0.5, min_requests=10, window_s=10))
    for i in range(10):
        breaker.record(i * 0.1, i % 2 == 0)  # alternate: never 2 failures in a row
    assert breaker.state == OPEN
    fresh = CircuitBreaker(CircuitPolicy(consecutive_failures=100, failure_ratio=0.5, min_requests=10, window_s=1))
    for i in range(10):
        fresh.record(i * 2.0, i % 2 == 0)  # same ratio, but spread: never 10 in the window
    assert fresh.state == CLOSED


def test_the_failures_in_the_window_are_counted_as_they_come_and_go() -> None:
    """The ratio is read from a running count (a failure used to sum the whole window,
    thousands of outcomes at a high rate): the count matches the window through
    expiry, trips and closes."""
    import random

    rng = random.Random(7)
    breaker = CircuitBreaker(CircuitPolicy(consecutive_failures=6, failure_ratio=0.6, min_requests=20, window_s=2))
    now, trips = 0.0, 0
    for _ in range(5000):
        now += rng.expovariate(50)
        if breaker.allow(now):
            was = breaker.state
            breaker.record(now, rng.random() < 0.55)
            trips += was != OPEN and breaker.state == OPEN
        assert breaker.failed == sum(not ok for _, ok in breaker.outcomes)
    assert trips > 0 and breaker.opened_count == trips


def test_a_retry_budget_on_a_healthy_backend_keeps_only_its_window() -> None:
    """No retry asks, so nothing trimmed the window but the request that added to it:
    the requests of the last ``window_s`` only, not every request ever."""
    budget = RetryBudget(ratio=0.2, window_s=10, min_retries=3)
    for t in range(100_000):
        budget.record_request(t * 0.01)  # 100 a second for 1,000 s
    assert len(budget.requests) <= 10 * 100 + 1
    assert sum(budget.try_spend(1000.0) for _ in range(300)) == 200, "a fifth of the window's 1,000 requests"


def test_retry_budget_caps_retries_at_a_share_of_recent_requests() -> None:
    budget = RetryBudget(ratio=0.2, window_s=10, min_retries=3)
    for t in range(100):
        budget.record_request(t * 0.05)
    granted = sum(budget.try_spend(5.0) for _ in range(50))
    assert granted == 20
    assert budget.try_spend(16.0), "the window moved on: requests and retries expired"
    quiet = RetryBudget(ratio=0.2, window_s=10, min_retries=3)
    assert sum(quiet.try_spend(0) for _ in range(10)) == 3, "a floor lets a quiet gateway retry"


async def test_gate_admits_up_to_the_limit_and_queues_by_priority() -> None:
    gate = AdmissionGate(limit=1, max_queue=2)
    assert gate.try_acquire()
    assert not gate.try_acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await gate.acquire(priority)
        order.append(name)

    low = asyncio.create_task(wait("low", 3))
    await asyncio.sleep(0)
    high = asyncio.create_task(wait("high", 1))
    await asyncio.sleep(0)
    assert gate.queued == 2 and not gate.can_queue()
    gate.release()
    await asyncio.sleep(0)
    assert order == ["high"]
    gate.release()
    await asyncio.gather(low, high)
    assert order == ["high", "low"]
    gate.release()
    assert gate.inflight == 0 and gate.try_acquire()


async def test_a_waiter_that_gives_up_leaves_no_slot_behind() -> None:
    gate = AdmissionGate(limit=1, max_queue=1)
    assert gate.try_acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await gate.acquire(2)
    assert gate.queued == 0
    gate.release()
    assert gate.inflight == 0


def test_no_limit_means_no_gate() -> None:
    gate = AdmissionGate(limit=None)
    assert all(gate.try_acquire() for _ in range(1000))


async def test_waiters_that_give_up_while_the_slots_stay_busy_do_not_pile_up() -> None:
    """A hung backend holds its slots while requests keep arriving and giving up: each
    leaves the line as it gives up, so the line holds the live waiters only, and they
    keep their order."""
    gate = AdmissionGate(limit=1, max_queue=4)
    assert gate.try_acquire()  # the slot the hung call holds
    for _ in range(1000):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await gate.acquire(2, "t")
        assert gate.queued == 0 and not gate._waiters
    order: list[int] = []

    async def wait(priority: int) -> None:
        assert await gate.acquire(priority, "t")
        order.append(priority)

    waiters = [asyncio.create_task(wait(p)) for p in (3, 1, 2)]
    await asyncio.sleep(0)
    for _ in range(4):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [1, 2, 3] and gate.inflight == 0


async def test_a_cancelled_waiter_leaves_the_line_before_its_task_runs_again() -> None:
    """``Task.cancel()`` cancels the awaited future at once; the task's own handler runs
    a turn later. In between, a release and a new request must not find the gone waiter
    still in line: the new request would queue behind nobody, with the slot free."""
    gate = AdmissionGate(limit=1, max_queue=8)
    assert gate.try_acquire()
    first = asyncio.create_task(gate.acquire(2, "a"))
    second = asyncio.create_task(gate.acquire(1, "b"))
    await asyncio.sleep(0)
    assert gate.queued == 2 and gate.ahead_of(3, "c") == 2
    first.cancel()
    second.cancel()  # both gone, in this very turn of the loop
    assert not gate._line and not gate._waiters, "the line holds the live waiters only"
    assert gate.queued == 0 and gate.ahead_of(3, "c") == 0 and gate.can_queue()
    gate.release()  # the slot is free, not passed to a waiter that is gone
    assert gate.inflight == 0 and gate.try_acquire()
    for task in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await task
    gate.release()
    assert gate.inflight == 0


async def test_a_waiter_granted_as_it_is_cancelled_passes_the_slot_on() -> None:
    """A slot handed to a waiter whose task is cancelled before it runs again is not
    lost: the waiter passes it to the next in line as it leaves."""
    gate = AdmissionGate(limit=1, max_queue=8)
    assert gate.try_acquire()
    late = asyncio.create_task(gate.acquire(2, "a"))
    behind = asyncio.create_task(gate.acquire(2, "b"))
    await asyncio.sleep(0)
    gate.release()  # the slot goes to ``late``...
    late.cancel()  # ...which gives up before it runs again
    with pytest.raises(asyncio.CancelledError):
        await late
    assert await behind, "the slot went on to the next in line"
    assert gate.queued == 0 and gate.inflight == 1
