"""The job runner every replica runs: claim, run, heartbeat, finish; and reap.

Every :data:`POLL_S` while there is work about (:data:`IDLE_POLL_S` while there is none,
or sooner when woken) it looks at each tier with queued jobs and, when the tier's mode
allows (:mod:`image_router.jobs.schedule`), claims the job the fair order or a near deadline
names. ``max_running`` per tier holds over all replicas (the claim takes a place in
the tier's running index in the same step as the lease). An attempt runs through the
dispatcher as the background filler's work does (:func:`image_router.decide.background`):

- on the route's intended tier alone (``Route.alone``) unless the job allows a
  downgrade, with the job's own seeds — fixed at submission, so a rerun on another
  replica makes the same image (on a tier with ``batch_rows``, byte-identical when its
  pass has the same size, else within one level: docs/batching.md);
- on such a tier, together with queued jobs of its shape, one pass for all
  (:mod:`image_router.jobs.batch`; the work itself: :mod:`image_router.jobs.make`): each
  job keeps its own lease, and one that is cancelled or lost leaves the pass to the others;
- with a budget of what is left of its deadline (not the route's interactive budget,
  which is seconds: a job waits on idle capacity, and a route's budget would turn a
  slow tier into a downgrade), and no tenant admission (``max_concurrency`` is for
  interactive requests; the job was counted against the tenant's rate and images at
  submission).

The attempt renews its lease every ``lease_s / 3``. A renewal that finds the job
``cancelling`` cancels the attempt's task (over gRPC that cancels Triton's request);
one that finds the lease gone (the reaper gave the job away) also stops it, and its
result is dropped: the terminal state is written by compare-and-set, once. Every
replica also reaps: a running job whose lease expired is requeued (its replica died).

**Draining** (``POST /admin/jobs/drain``) stops this replica claiming; its running
attempts finish, and it goes on reaping and delivering webhooks. It is the replica's
own state, not the store's: an operator drains the pod about to go down while the
others keep the queue moving, and a restarted process claims again. A **pause**
(``?scope=cluster``) is the store's: every replica reads it every :data:`FLAGS_EVERY_S`
and claims nothing until it is lifted — for a Triton upgrade, say — while submissions
are still accepted and queued.

A job that asked for ``progress`` webhooks gets one at each lease renewal, sent by the
replica running it (:meth:`~image_router.jobs.deliver.Deliverer.progress`), with the same
estimate as its view.

For operators (:mod:`image_router.jobs.ops`) the runner keeps a census of the store's jobs,
refreshed every :data:`~image_router.jobs.ops.CENSUS_EVERY_S` (the metrics read it, never the
store), counts what its attempts ended with, and writes one access-log line per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from image_router.config.table import RoutingTable
from image_router.errors import BudgetExhausted, RouterError
from image_router.jobs.batch import mates
from image_router.jobs.deliver import Deliverer
from image_router.jobs.make import PassMaker
from image_router.jobs.model import Job
from image_router.jobs.ops import CENSUS_EVERY_S, OUTCOMES, Census, attempt_line, take_census
from image_router.jobs.schedule import PRIORITY, Pacer, pick, running_progress, service_estimate
from image_router.jobs.store import JobStore

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from image_router.gateway import Gateway
    from image_router.telemetry.requests import Recorder

__all__ = ["JobRunner"]

log = logging.getLogger("router.jobs")
POLL_S = 0.1
# Nothing queued anywhere, nothing running here, no webhook due (or jobs off): the next
# look waits this long, unless a submission, a finished attempt or a resume here wakes
# it. Polling at POLL_S was half an idle gateway's CPU (33.3 -> 16.0 ms a second without
# it: bench/before_after.py --path idle); a job submitted to another replica is picked
# up here within this bound.
IDLE_POLL_S = 1.0
REAP_EVERY_S = 1.0
FLAGS_EVERY_S = 1.0
Encode = Callable[["NDArray[Any]", str, int], bytes]


class JobRunner:
    def __init__(
        self,
        gateway: Gateway,
        encode: Encode,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        recorder: Recorder | None = None,
    ) -> None:
        self.gateway = gateway
        self.encode = encode
        self.maker = PassMaker(gateway, encode, wall)
        self.recorder = recorder  # metrics and the access log (None: neither)
        self.wall = wall
        self.clock = clock
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self.pacers: dict[str, Pacer] = {}
        self.attempts: dict[str, asyncio.Task[None]] = {}
        self.stopped: dict[str, str] = {}  # job id -> why its attempt was cancelled: "cancel" | "lost"
        self.wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._reaped = 0.0
        self._delivering: asyncio.Task[int] | None = None
        self.counts = {"claimed": 0, "completed": 0, "failed": 0, "lost": 0, "reaped": 0}
        self.finished = dict.fromkeys(OUTCOMES, 0)  # this replica's attempts, by how they ended
        self.running: dict[str, Job] = {}  # the jobs this replica's attempts run
        self.draining = False  # claims nothing new (POST /admin/jobs/drain)
        self.paused = False  # every replica claims nothing (the store's flag, read every FLAGS_EVERY_S)
        self._flags_at = float("-inf")
        self._sending: set[asyncio.Task[str]] = set()  # progress webhooks in flight
        self.census: Census | None = None
        self._census_at = float("-inf")
        self.deliverer = Deliverer(self.owner)

    def store(self) -> JobStore | None:
        table, state = self.gateway.table, self.gateway.state_store
        return None if table.jobs is None or state is None else JobStore(state, table.jobs)

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop claiming; cancel the running attempts and hand their jobs back to the
        queue at once (attempts not counted), so another replica starts them without
        waiting out the lease. A store that does not answer leaves them to the lease."""
        running = list(self.attempts)
        attempts = set(self.attempts.values())
        others = [t for t in (self._loop, self._delivering, *self._sending) if t is not None]
        for task in (*attempts, *others):
            task.cancel()
        # The attempts first, and their jobs handed back as soon as they have stopped: the
        # claim loop or a round of deliveries slow to unwind (a store call under load) once
        # held the hand-back past the shutdown's bound, and the job waited out its lease.
        await _ended_all(attempts)
        store = self.store()
        if store is not None:
            for job_id in running:
                with contextlib.suppress(RouterError):
                    await store.hand_back(job_id, self.owner, self.wall())
        await _ended_all(others)
        await self.deliverer.aclose()

    async def _run(self) -> None:
        while True:
            busy = True
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store fault: try again next tick
                log.warning("job runner: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait_s(busy)):
                    await self.wake.wait()
            self.wake.clear()

    def nudge(self) -> None:
        """Look at the store now: a request here queued a job or a webhook, or changed
        whether jobs may start (an idle runner looks only every :data:`IDLE_POLL_S`)."""
        self.wake.set()

    def wait_s(self, busy: bool) -> float:
        """How long until the next look, unless :meth:`nudge` cuts it short:
        :data:`POLL_S` with work about; else :data:`IDLE_POLL_S`, or less when the pause
        flag or the reaper is due sooner (a nudge's look may have come just before)."""
        if busy:
            return POLL_S
        if self.gateway.table.jobs is None:  # off: a reload that turns them on is seen within this
            return IDLE_POLL_S
        due = min(self._flags_at + FLAGS_EVERY_S, self._reaped + REAP_EVERY_S) - self.clock()
        return min(IDLE_POLL_S, max(POLL_S, due))

    async def tick(self) -> bool:
        """One look: reap, deliver, read the flags, claim what may start. Whether there is
        work about — jobs queued, attempts running here, webhooks due or being sent —
        so the next look comes after :data:`POLL_S` rather than :data:`IDLE_POLL_S`."""
        store = self.store()
        if store is None:
            return False
        now = self.clock()
        if now - self._reaped >= REAP_EVERY_S:
            self._reaped = now
            self.counts["reaped"] += await store.reap(self.wall(), self.owner)
        config = store.config
        last = self._delivering
        delivering = _deliveries_pending(last)
        if last is None or last.done():  # deliveries never hold up claims
            work = self.deliverer.tick(store.state, config.secrets, config.webhook_allow_cidrs,
                                       config.webhook_schedule_s, config.webhook_timeout_s)  # fmt: skip
            self._delivering = asyncio.get_running_loop().create_task(work)
        if now - self._flags_at >= FLAGS_EVERY_S:
            self._flags_at = now
            self.paused = await store.paused()
        table = self.gateway.table
        queued = not self.draining and not self.paused and await store.anything_queued()  # one look when idle
        if queued:
            for tier in table.models:
                if await store.waiting(tier):
                    await self._try(store, table, tier)
        if now - self._census_at >= CENSUS_EVERY_S:
            self._census_at = now
            with contextlib.suppress(RouterError):  # a store fault: the last census stands
                await self.recount(store)
        return queued or bool(self.attempts) or delivering

    async def recount(self, store: JobStore) -> Census:
        """The store's jobs counted now (also kept for the metrics and the status page)."""
        census = await take_census(store.state, self.gateway.table.models, store.config.max_queued, self.wall())
        self.census = census
        return census

    def drain(self, on: bool) -> None:
        self.draining = on
        self.wake.set()  # a resume claims at once

    def describe(self) -> dict[str, Any] | None:
        """This replica's side of the jobs, and the last census (``None``: jobs are off)."""
        if self.gateway.table.jobs is None:
            return None
        here: dict[str, int] = {}
        for job in self.running.values():
            here[job.tier] = here.get(job.tier, 0) + 1
        now = self.wall()
        return {
            "replica": self.owner,
            "draining": self.draining,
            "paused": self.paused,
            "running_here": here,
            "finished_here": dict(self.finished),
            **(self.census.describe(now) if self.census is not None else {}),
        }

    async def _try(self, store: JobStore, table: RoutingTable, tier: str) -> None:
        config = store.config
        pacer = self.pacers.setdefault(tier, Pacer(config.tier(tier).min_share))
        pacer.min_share = config.tier(tier).min_share
        wall = self.wall()
        candidates = await store.candidates(tier)
        expected_s = self._expected_s(table, tier)
        idle = self.gateway.dispatcher.idle(table.models[tier])
        first = pick(candidates, wall, expected_s, config.urgency_margin_s, set())
        if first is None or pacer.mode(idle, first[1] == "urgent", self.clock()) is None:
            return  # nothing may start now: the tenants' caps are not read (a store call each)
        capped = await store.capped(candidates)  # tenants at their max_running: their jobs wait
        picked = pick(candidates, wall, expected_s, config.urgency_margin_s, capped)
        if picked is None:
            return
        job, order = picked
        mode = pacer.mode(idle, order == "urgent", self.clock())
        if mode is None:
            return
        group: list[Job] = []
        try:
            for member in mates(job, candidates, await self.maker.batch_rows(tier), wall, capped):
                taken = await store.claim(member, self.owner, wall)
                if taken is None:  # someone else took it, or the tier or the tenant is full now
                    if member is job:
                        return
                    continue
                group.append(taken)
                self.counts["claimed"] += 1
                if self.recorder is not None and self.recorder.metrics is not None:
                    self.recorder.metrics.job_started(tier, mode, max(0.0, wall - taken.created_at))
        except RouterError:  # a mate's claim found no store: what was claimed runs
            if not group:
                raise
        except BaseException:  # stopping mid-claim: what was claimed goes back to the queue now
            for taken in group:
                with contextlib.suppress(Exception):  # what this cannot hand back, its lease will
                    await store.hand_back(taken.id, self.owner, self.wall())
            raise
        task = asyncio.get_running_loop().create_task(self._attempt(store, group, mode, pacer))
        ids = [taken.id for taken in group]
        for taken in group:
            self.attempts[taken.id] = task
            self.running[taken.id] = taken
        task.add_done_callback(lambda _: self._gone(ids))

    def _gone(self, job_ids: list[str]) -> None:
        """An attempt ended: its jobs are no longer this replica's."""
        for job_id in job_ids:
            self.attempts.pop(job_id, None)
            self.running.pop(job_id, None)

    def _expected_s(self, table: RoutingTable, tier: str) -> float:
        forecast = self.gateway.dispatcher.forecast(table.models[tier])
        if forecast is not None:
            return float(forecast.expected_s)
        return (table.models[tier].latency_hint_ms or 1000.0) / 1000

    def service_s(self, tier: str) -> float:
        """One request's usual service time on ``tier``: this replica's forecast (learnt
        from answers), else the model's ``latency_hint_ms`` (1 s for a tier reloaded away)."""
        model = self.gateway.table.models.get(tier)
        if model is None:
            return 1.0
        forecast = self.gateway.dispatcher.forecast(model)
        return service_estimate(forecast.service_s if forecast is not None else None, model.latency_hint_ms)

    async def _attempt(self, store: JobStore, group: list[Job], mode: str, pacer: Pacer) -> None:
        """Run ``group`` (one job, or the jobs of one batched pass) and finish each job.

        Each job keeps its own heartbeat. A job cancelled or lost while its pass runs is
        left out of the pass's answer; the pass itself is stopped only when every job in
        it is (over gRPC that stops Triton's work), so one client's cancel never costs
        another client's job."""
        started = self.clock()
        work = asyncio.current_task()
        ids = {job.id for job in group}
        beats = [asyncio.get_running_loop().create_task(self._heartbeat(store, job, work, ids)) for job in group]
        outcomes: list[tuple[Job, Job | None, list[bytes]]]  # (job, its end or None: lost, images)
        requeue: list[Job] = []
        try:
            made = await self.maker.make(group, PRIORITY[mode])
            outcomes = [(job, *self._kept(job, new, images)) for job, (new, images) in zip(group, made, strict=True)]
        except asyncio.CancelledError:
            whys = {job.id: self.stopped.pop(job.id, None) for job in group}
            if not all(whys.values()):  # shutting down: the leases say what happens next
                for job in group:
                    outcome = {"lost": "lost", "cancel": "cancelled"}.get(whys[job.id] or "", "handed_back")
                    self._ended(job, outcome, mode, self.clock() - started)
                raise
            outcomes = [(job, *self._kept(job, None, [], whys[job.id])) for job in group]
        except BudgetExhausted as exc:
            outcomes = []
            for job in group:
                if len(group) > 1 and job.deadline_at > group[0].deadline_at:
                    # the pass ran on the first job's deadline: a mate with time left goes back
                    # to the queue, its attempt not counted, and runs again (alone if need be)
                    requeue.append(job)
                    self.stopped.pop(job.id, None)
                    continue
                new = job.expired(self.wall())
                if not new.terminal:
                    new = job.finished("failed", self.wall(), error=_error(exc))
                outcomes.append((job, *self._kept(job, new, [])))
        except RouterError as exc:
            failed = _error(exc)
            outcomes = [(job, *self._kept(job, job.finished("failed", self.wall(), error=failed), [])) for job in group]
        except Exception as exc:  # a bug must not leave the job running forever
            log.exception("job %s failed", ", ".join(sorted(ids)))
            error = {"code": "internal_error", "message": f"{type(exc).__name__}", "status": 500}
            outcomes = [(job, *self._kept(job, job.finished("failed", self.wall(), error=error), [])) for job in group]
        finally:
            for beat in beats:
                beat.cancel()
            pacer.ran(mode, started, self.clock())
        for job in requeue:
            with contextlib.suppress(RouterError, asyncio.CancelledError):  # else its lease requeues it
                await store.hand_back(job.id, self.owner, self.wall())
            self._ended(job, "handed_back", mode, self.clock() - started)
        for job, end, images in outcomes:
            if end is None:  # given away while it ran: the store's record is another attempt's now
                self._ended(job, "lost", mode, self.clock() - started)
                continue
            ttl = max(1.0, job.expires_at - self.wall())
            with contextlib.suppress(asyncio.CancelledError):
                done = await store.finish(job, self.owner, end, images, ttl)
                self.counts["completed" if done is not None and done.status == "completed" else "failed"] += 1
                if done is None:
                    self.counts["lost"] += 1
                self._ended(done or job, "lost" if done is None else done.status, mode, self.clock() - started)
        self.wake.set()

    def _kept(
        self, job: Job, new: Job | None, images: list[bytes], why: str | None = None
    ) -> tuple[Job | None, list[bytes]]:
        """What to write for ``job`` once its pass is over: a job cancelled meanwhile is
        ``cancelled`` (its images dropped); one lost (its lease given away) writes nothing."""
        why = why or self.stopped.pop(job.id, None)
        if why == "lost":
            return None, []
        if why == "cancel" or new is None:
            return job.finished("cancelled", self.wall()), []
        return new, images

    def _ended(self, job: Job, outcome: str, mode: str, run_s: float) -> None:
        """Count the attempt's end and write its access-log line."""
        self.finished[outcome] = self.finished.get(outcome, 0) + 1
        if self.recorder is None:
            return
        if self.recorder.metrics is not None:
            self.recorder.metrics.job_finished(job.tier, outcome, run_s)
        if self.recorder.access_log is not None:
            self.recorder.access_log.record(attempt_line(job, outcome, mode, run_s, self.wall()))

    async def _heartbeat(self, store: JobStore, job: Job, work: asyncio.Task[Any] | None, group: set[str]) -> None:
        tick = 0
        while True:
            await asyncio.sleep(store.config.lease_s / 3)
            try:
                now = await store.heartbeat(job.id, self.owner)
            except RouterError:
                continue  # the store did not answer: the lease may still hold; try again
            if now is None or now.status == "cancelling":
                self.stopped[job.id] = "lost" if now is None else "cancel"
                if work is not None and group <= self.stopped.keys():  # nobody's left in the pass: stop it
                    work.cancel(None if now is None else "cancelled")  # wasted compute's reason, at the call
                    return
                if now is None:  # lost: nothing of it to renew
                    return
                continue  # cancelled while its pass runs on: its lease is renewed until the pass ends
            hook = now.webhook if now is not None else None
            if now is not None and hook is not None and "progress" in hook.get("events", ()):
                tick += 1
                self._progress(store, now, hook["url"], tick)

    def _progress(self, store: JobStore, job: Job, url: str, tick: int) -> None:
        """Send ``job``'s progress webhook beside the heartbeat (a slow receiver must not
        delay a lease renewal): the same estimate as the job's view."""
        if job.tier not in self.gateway.table.models:  # reloaded away: no estimate to give
            return
        progress = running_progress(job, self.service_s(job.tier), self.wall())
        if progress is None:
            return
        config = store.config
        send = self.deliverer.progress(url, job, progress, tick, config.secrets(job.tenant),
                                       config.webhook_allow_cidrs, config.webhook_timeout_s)  # fmt: skip
        task = asyncio.get_running_loop().create_task(send)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


def _error(exc: RouterError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "status": exc.status}


def _deliveries_pending(last: asyncio.Task[int] | None) -> bool:
    """Whether the last round of webhook deliveries still runs or found messages due
    (more may be: another look soon). A round that failed is logged and found none."""
    if last is None:
        return False
    if not last.done():
        return True
    if last.cancelled():
        return False
    fault = last.exception()
    if fault is not None:
        log.warning("webhook deliveries: %s: %s", type(fault).__name__, fault)
        return False
    return last.result() > 0


async def _ended_all(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Wait for cancelled ``tasks`` to end; their faults were logged where they happened
    (taken here, not raised). ``asyncio.wait`` lets a cancellation of the caller through:
    the shutdown's own bound."""
    if tasks:
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()
