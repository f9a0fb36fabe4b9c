"""How often the job runner looks at the store: every ``POLL_S`` while there is work
about, every ``IDLE_POLL_S`` when there is none (an idle gateway's CPU went mostly to
these looks) or sooner when the pause flag or the reaper is due, and at once when a
request here nudges it (SQLite, two connections standing for two gateway processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from image_router.jobs import runner as runner_module
from image_router.jobs.runner import FLAGS_EVERY_S, IDLE_POLL_S, POLL_S, JobRunner
from image_router.jobs.store import JobStore
from image_router.state import Txn
from tests.unit.test_jobs_store import CONFIG, close, job, stores


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def runner_on(store: JobStore, clock: Clock) -> JobRunner:
    """A runner whose gateway is only what :meth:`JobRunner.tick` reads: the table's jobs
    config and its (here: no) tiers, and the state store."""
    gateway: Any = SimpleNamespace(table=SimpleNamespace(jobs=CONFIG, models={}), state_store=store.state)
    return JobRunner(gateway, encode=lambda *_: b"", wall=lambda: 100.0, clock=clock)


async def look(runner: JobRunner) -> bool:
    """One tick, the last round of deliveries over first (ticks are POLL_S apart at least;
    one still running counts as work about), and the round it starts over before the
    test goes on: left running, that round could read the store after the test's next
    write (its reads run on the store's thread) and find what the next look should."""
    if runner._delivering is not None:
        await runner._delivering
    busy = await runner.tick()
    if runner._delivering is not None:
        await runner._delivering
    return busy


async def stop(runner: JobRunner, *all: JobStore) -> None:
    for task in (runner._loop, runner._delivering):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await runner.deliverer.aclose()
    await close(*all)


def test_the_runner_says_idle_only_when_nothing_is_queued_running_or_due(tmp_path: Path) -> None:
    async def run() -> None:
        here, there = stores(tmp_path)
        runner = runner_on(here, Clock())  # a clock that stands still: it reaps once, at the first look
        try:
            assert await look(runner) is False, "an empty store: idle"
            submitted = (await there.submit(job(), None)).job  # another replica's submission
            assert await look(runner) is True, "a job queued anywhere: busy"
            runner.drain(True)
            assert await look(runner) is False, "draining claims nothing: idle (a resume nudges it)"
            runner.drain(False)
            runner.paused = True
            assert await look(runner) is False, "paused everywhere: idle (the flag is read every second)"
            runner.paused = False
            assert await there.claim(submitted, "B", 101.0) is not None  # running there: queued nowhere
            assert await look(runner) is False
            runner.attempts["j"] = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
            assert await look(runner) is True, "an attempt running here: busy"
            runner.attempts.clear()
            assert await look(runner) is False
            await there.state.commit(Txn(add=(("wq", "msg-1", 50.0),)))  # a webhook due since 50 s
            assert await look(runner) is False, "this look starts the round of deliveries that finds it"
            assert await look(runner) is True, "the last round found one due: busy"
        finally:
            await stop(runner, here, there)

    asyncio.run(run())


def test_an_idle_runner_waits_until_its_next_flag_or_reaper_look_at_most_idle_poll_s(tmp_path: Path) -> None:
    async def run() -> None:
        (store,) = stores(tmp_path, n=1)
        clock = Clock(1000.0)
        runner = runner_on(store, clock)
        try:
            assert runner.wait_s(busy=True) == POLL_S
            assert runner.wait_s(busy=False) == POLL_S, "flags never read: due now"
            await look(runner)  # reads the flags and reaps at 1000.0
            assert runner.wait_s(busy=False) == min(IDLE_POLL_S, FLAGS_EVERY_S)
            clock.now += 0.7  # a nudge's look now would read neither
            assert runner.wait_s(busy=False) == pytest.approx(FLAGS_EVERY_S - 0.7)
            clock.now += 0.29
            assert runner.wait_s(busy=False) == POLL_S, "never sooner than POLL_S"
            assert runner.wait_s(busy=True) == POLL_S
            runner.gateway.table.jobs = None  # jobs turned off by a reload: nothing to look for
            assert runner.wait_s(busy=False) == IDLE_POLL_S
        finally:
            await stop(runner, store)

    asyncio.run(run())


def test_a_nudge_makes_an_idle_runner_look_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IDLE_POLL_S", "FLAGS_EVERY_S", "REAP_EVERY_S"):  # idle looks 30 s apart: only a nudge is sooner
        monkeypatch.setattr(runner_module, name, 30.0)

    async def run() -> None:
        (store,) = stores(tmp_path, n=1)
        runner = runner_on(store, Clock())
        looks: list[bool] = []
        tick = runner.tick

        async def counted() -> bool:
            busy = await tick()
            looks.append(busy)
            return busy

        runner.tick = counted  # type: ignore[method-assign]
        runner.start()
        try:
            async with asyncio.timeout(10):
                while not looks:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert looks == [False], "idle: no second look for 30 s"
            runner.nudge()  # what a submission, a cancel or a pause here does
            async with asyncio.timeout(10):
                while len(looks) < 2:
                    await asyncio.sleep(0.01)
        finally:
            await stop(runner, store)

    asyncio.run(run())


def test_shutdown_hands_a_running_job_back_before_waiting_for_the_claim_loop(tmp_path: Path) -> None:
    """A background task slow to unwind after its cancel (the claim loop or a round of
    deliveries inside a store call under load) once held the hand-back past the
    shutdown's bound: the job waited out its lease elsewhere and ran twice."""

    async def run() -> None:
        (store,) = stores(tmp_path, n=1)
        runner = runner_on(store, Clock())
        loop = asyncio.get_running_loop()
        release = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await release.wait()
                raise

        try:
            running = (await store.submit(job(), None)).job
            assert await store.claim(running, runner.owner, 101.0) is not None
            runner.attempts[running.id] = loop.create_task(asyncio.sleep(3600))
            runner._loop = loop.create_task(stubborn())
            await asyncio.sleep(0)
            closing = loop.create_task(runner.aclose())
            async with asyncio.timeout(10):
                while (found := await store.get(running.id)) is None or found.status != "queued":
                    await asyncio.sleep(0.01)
            assert not closing.done(), "handed back while the claim loop still unwinds"
            release.set()
            await closing
        finally:
            release.set()
            await stop(runner, store)

    asyncio.run(run())
