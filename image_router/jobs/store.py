"""Jobs in the durable state store: every change one atomic step (:class:`~image_router.state.Txn`).

What lives where (``{t}`` tenant, ``{m}`` tier)::

    job:{id}            the job (JSON), compare-and-set on every change; ttl: its retention
    job:lease:{id}      the replica running it, with a ttl of lease_s (renewed every lease_s/3)
    job:key:{t}:{sha}   Idempotency-Key -> "id fingerprint" (ttl: idempotency_ttl_s)
    job:vt:{m}          the tier's fair-share clock: the tag of the last job claimed
    job:tag:{m}:{t}     the tenant's last tag on the tier
    job:img:{id}:{i}    result image i, encoded (ttl: retention)
    job:pause           set while an operator pauses every replica's claims (no ttl)
    index q:{m}         queued ids by tag (fair order)      index qd     queued ids by deadline
    index qt:{t}        the tenant's queued ids (its cap)   index qa     all queued ids (the global cap)
    index r:{m}         "{t}/{id}" running on the tier by start (its max_running, all replicas)
    index rt:{t}        the tenant's running ids (its max_running, all replicas)
    index run           running ids (the reaper's list)     index jt:{t} the tenant's ids by creation
    index ev:{id}       the job's events by sequence (SSE replay)
    index jx            [id, tenant, tier] by the end of the job's retention (the sweep's list)

Keys expire by their ttl, index rows do not (the store never evicts), so every job is
also in ``jx`` by the end of its retention, with the tenant and tier that name its
other indexes: :meth:`JobStore.reap` sweeps what a job left behind once it is due —
its listing row, its events, and the queue and running rows of a job that was lost
with its key (which would otherwise hold a place of its tenant's ``max_running``, or
its queue cap, for ever).

Fairness between tenants is weighted fair queuing: a job's tag is ``max(tier clock,
tenant's last tag) + images``, so a tenant that queued a hundred jobs waits behind one
that queued one, and a tenant that was idle does not bank credit. Tags and the queue
are written in the submission's step; the tenant's last tag is read before it and not
compared, so two submissions of one tenant at the same instant may share a tag (their
ids then order them) rather than contend — fairness is approximate by design there.

A call the store does not answer is :class:`~image_router.errors.StoreUnavailable` (503): a
job that cannot be written is not accepted, unlike the cache, where a fault is a miss.

Over 400 lines on purpose: every method is one atomic step over the key and index layout
above, and keeping them beside it is what lets a reader check that each step moves a
job between exactly the rows its change of state names.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from image_router.config.table import JobsConfig
from image_router.errors import StoreUnavailable
from image_router.jobs.deliver import delivery_step
from image_router.jobs.model import ACTIVE, Job
from image_router.state import Committed, GuardedState, Txn

__all__ = ["JobStore", "Submitted"]

SUBMIT_TRIES = 8
CLAIM_SCAN = 32  # queued jobs looked at per claim
SWEEP = 64  # jobs past their retention forgotten per batch
SWEEP_BATCHES = 16  # batches per reap at most (1,024 jobs a second: more than any gateway ends)
SWEEP_LEASE_S = 30.0


@dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    replayed: bool  # an Idempotency-Key named a job that already existed
    reused: bool = False  # ... with another request (422)
    full: bool = False  # a queue cap refused it (429)


def _lease(job_id: str) -> str:
    return f"job:lease:{job_id}"


def _queued(job: Job) -> Iterable[tuple[str, str, float]]:
    yield (f"q:{job.tier}", job.id, job.tag)
    yield ("qd", job.id, job.deadline_at)
    yield (f"qt:{job.tenant}", job.id, job.created_at)
    yield ("qa", job.id, job.created_at)


def _running(job: Job) -> Iterable[tuple[str, str, float]]:
    yield (f"r:{job.tier}", f"{job.tenant}/{job.id}", job.started_at or 0.0)
    yield (f"rt:{job.tenant}", job.id, job.started_at or 0.0)
    yield ("run", job.id, job.started_at or 0.0)


def _sweep_row(job_id: str, tenant: str, tier: str) -> str:
    return orjson.dumps([job_id, tenant, tier]).decode()


def _swept(job: Job) -> tuple[str, str, float]:
    return ("jx", _sweep_row(job.id, job.tenant, job.tier), job.expires_at)


def _rows(job_id: str, tenant: str, tier: str) -> list[tuple[str, str]]:
    """Every index row a job may have but its events (queued, running, listed, swept)."""
    rows = [(f"q:{tier}", job_id), ("qd", job_id), (f"qt:{tenant}", job_id), ("qa", job_id)]
    rows += [(f"r:{tier}", f"{tenant}/{job_id}"), (f"rt:{tenant}", job_id), ("run", job_id)]
    return [*rows, (f"jt:{tenant}", job_id), ("jx", _sweep_row(job_id, tenant, tier))]


def _event(job: Job) -> tuple[str, str, float]:
    return (f"ev:{job.id}", orjson.dumps(job.event()).decode(), float(job.sequence))


class JobStore:
    def __init__(self, state: GuardedState, config: JobsConfig) -> None:
        self.state = state
        self.config = config

    # -- reading -------------------------------------------------------------------------

    async def _get(self, keys: list[str]) -> list[bytes | None]:
        got = await self.state.get_many(keys)
        if got is None:
            raise StoreUnavailable("the state store did not answer: try again")
        return got

    async def _scan(self, index: str, **kw: float | int | bool) -> list[tuple[str, float]]:
        rows = await self.state.scan(index, **kw)  # type: ignore[arg-type]
        if rows is None:
            raise StoreUnavailable("the state store did not answer: try again")
        return rows

    async def _commit(self, txn: Txn) -> Committed:
        done = await self.state.commit(txn)
        if done is None:
            raise StoreUnavailable("the state store did not answer: try again")
        return done

    async def read(self, job_id: str) -> tuple[Job, bytes] | None:
        (raw,) = await self._get([f"job:{job_id}"])
        return None if raw is None else (Job.load(raw), raw)

    async def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or ``None`` when unknown, expired, deleted or (``tenant`` given)
        another tenant's: a client cannot tell those apart."""
        found = await self.read(job_id)
        if found is None or (tenant is not None and found[0].tenant != tenant):
            return None
        return found[0]

    async def events(self, job_id: str, after: int = 0) -> list[dict[str, object]]:
        rows = await self._scan(f"ev:{job_id}", lo=after + 0.5, limit=256)
        return [orjson.loads(member) for member, _ in rows]

    async def listing(self, tenant: str, limit: int, before: float | None = None) -> list[Job]:
        hi = float("inf") if before is None else before
        rows = await self._scan(f"jt:{tenant}", hi=hi, limit=limit, reverse=True)
        raws = await self._get([f"job:{job_id}" for job_id, _ in rows]) if rows else []
        return [Job.load(raw) for raw in raws if raw is not None]

    async def position(self, job: Job) -> int:
        """1 = next to start in its tier (counted over at most 1000 ahead)."""
        rows = await self._scan(f"q:{job.tier}", hi=job.tag, limit=1000)
        return sum(1 for job_id, tag in rows if tag < job.tag or job_id <= job.id)

    async def started(self, tier: str) -> list[float]:
        """When the jobs running on ``tier`` (all replicas) started, by the wall clock."""
        return [at for _, at in await self._scan(f"r:{tier}", limit=1000)]

    async def image(self, job_id: str, index: int) -> bytes | None:
        (raw,) = await self._get([f"job:img:{job_id}:{index}"])
        return raw

    async def paused(self) -> bool:
        """Whether an operator paused the jobs on every replica (``POST
        /admin/jobs/drain?scope=cluster``)."""
        (raw,) = await self._get(["job:pause"])
        return raw is not None

    async def pause(self, on: bool, now: float) -> None:
        if on:
            await self._commit(Txn(put=(("job:pause", orjson.dumps({"at": now}), None),)))
        else:
            await self._commit(Txn(delete=("job:pause",)))

    # -- submission ----------------------------------------------------------------------

    async def submit(self, job: Job, key: str | None) -> Submitted:
        """Write ``job`` and queue it, in one step with its ``Idempotency-Key`` (hashed,
        scoped to the tenant) and the caps: of concurrent submissions with one key, on
        any replicas, exactly one creates the job and the rest are told its id."""
        key_name = f"job:key:{job.tenant}:{hashlib.sha256(key.encode()).hexdigest()}" if key else None
        tag_key, clock_key = f"job:tag:{job.tier}:{job.tenant}", f"job:vt:{job.tier}"
        cost = float(job.request.get("n", 1))
        ttl = job.expires_at - job.created_at
        for _ in range(SUBMIT_TRIES):
            if key_name is not None:
                replay = await self._replay(key_name, job.fingerprint)
                if replay is not None:
                    return replay
            last, clock = await self._get([tag_key, clock_key])
            tag = max(float(last or 0), float(clock or 0)) + cost
            queued = dataclasses.replace(job, tag=tag)
            expect: list[tuple[str, bytes | None]] = []  # the tag is not compared: see the module
            put: list[tuple[str, bytes, float | None]] = [
                (f"job:{job.id}", queued.dump(), ttl),
                (tag_key, repr(tag).encode(), ttl),
            ]
            if key_name is not None:
                expect.append((key_name, None))
                put.append((key_name, f"{job.id} {job.fingerprint}".encode(), self.config.idempotency_ttl_s))
            done = await self._commit(
                Txn(
                    expect=tuple(expect),
                    room=((f"qt:{job.tenant}", self.config.max_queued_per_tenant), ("qa", self.config.max_queued)),
                    put=tuple(put),
                    add=(
                        *_queued(queued),
                        (f"jt:{job.tenant}", job.id, job.created_at),
                        _swept(queued),
                        _event(queued),
                    ),
                )
            )
            if done == "ok":
                return Submitted(queued, False)
            if done == "full":
                return Submitted(queued, False, full=True)
        raise StoreUnavailable("the job could not be queued (too much contention): try again")

    async def _replay(self, key_name: str, fingerprint: str) -> Submitted | None:
        (held,) = await self._get([key_name])
        if held is None:
            return None
        job_id, _, printed = held.decode().partition(" ")
        found = await self.read(job_id)
        if found is None:  # deleted since: the key is spent
            raise StoreUnavailable("the job this Idempotency-Key created is gone", field="Idempotency-Key")
        return Submitted(found[0], True, reused=printed != fingerprint)

    # -- running -------------------------------------------------------------------------

    async def candidates(self, tier: str) -> list[Job]:
        """The first queued jobs of ``tier`` in fair order, and those of the earliest
        deadlines among all queued that are on ``tier``."""
        rows = await self._scan(f"q:{tier}", limit=CLAIM_SCAN)
        urgent = await self._scan("qd", limit=CLAIM_SCAN)
        ids = list(dict.fromkeys([i for i, _ in rows] + [i for i, _ in urgent]))
        raws = await self._get([f"job:{i}" for i in ids]) if ids else []
        return [j for j in (Job.load(r) for r in raws if r is not None) if j.tier == tier and j.status == "queued"]

    async def anything_queued(self) -> bool:
        return bool(await self._scan("qa", limit=1))

    async def waiting(self, tier: str) -> bool:
        return bool(await self._scan(f"q:{tier}", limit=1))

    async def capped(self, jobs: Iterable[Job]) -> frozenset[str]:
        """The tenants among ``jobs`` that run as many jobs as they may (over all
        replicas): a claim of theirs would be refused, so the runner picks around them.
        Read before the claim, so possibly stale — the claim itself checks again."""
        out = set()
        for tenant in {j.tenant for j in jobs}:
            cap = self.config.running_cap(tenant)
            if cap is not None and len(await self._scan(f"rt:{tenant}", limit=cap)) >= cap:
                out.add(tenant)
        return frozenset(out)

    async def claim(self, job: Job, owner: str, now: float) -> Job | None:
        """Take ``job`` (still queued, as read) for ``owner``: its lease, its place among
        the tier's running jobs and its tenant's (each ``max_running`` over all
        replicas), its ``started`` event, in one step. ``None``: someone else took it,
        or the tier or the tenant is full."""
        found = await self.read(job.id)
        if found is None or found[0].status != "queued":
            return None
        current, raw = found
        taken = current.claimed(owner, now)
        tier = self.config.tier(job.tier)
        hook = delivery_step(taken, now)  # its `started` webhook, when asked for
        room = [(f"r:{job.tier}", tier.max_running)]
        cap = self.config.running_cap(job.tenant)
        if cap is not None:  # checked in the claim's own step: two replicas cannot both take the last place
            room.append((f"rt:{job.tenant}", cap))
        done = await self._commit(
            Txn(
                expect=((f"job:{job.id}", raw),),
                room=tuple(room),
                put=(
                    (f"job:{job.id}", taken.dump(), max(1.0, taken.expires_at - now)),
                    (_lease(job.id), owner.encode(), self.config.lease_s),
                    (f"job:vt:{job.tier}", repr(current.tag).encode(), None),
                    *hook.put,
                ),
                remove=tuple((index, member) for index, member, _ in _queued(current)),
                add=(*_running(taken), _event(taken), *hook.add),
            )
        )
        return taken if done == "ok" else None

    async def heartbeat(self, job_id: str, owner: str) -> Job | None:
        """Renew the lease; the job as it is now (``None``: this replica lost it — the
        reaper gave it away, or it was deleted — so the attempt must stop)."""
        found = await self.read(job_id)
        if found is None or found[0].owner != owner or found[0].status not in ACTIVE:
            return None
        held = await self.state.lease(_lease(job_id), owner, self.config.lease_s)
        if held is None:
            raise StoreUnavailable("the state store did not answer")
        return found[0] if held else None

    async def transition(self, job: Job, raw: bytes, new: Job, extra: Txn | None = None) -> bool:
        """Write ``new`` over ``job`` (as ``raw``) if no one changed it meanwhile, moving it
        between the indexes its change of state moves it between, with its event."""
        if new is job or new == job:
            return True
        add: list[tuple[str, str, float]] = [_event(new)]
        remove: list[tuple[str, str]] = []
        if job.status == "queued" and new.status != "queued":
            remove += [(index, member) for index, member, _ in _queued(job)]
        if job.status in ACTIVE and new.status not in ACTIVE:
            remove += [(index, member) for index, member, _ in _running(job)]
        if new.status == "queued" and job.status != "queued":
            add += list(_queued(new))
        put = [(f"job:{job.id}", new.dump(), max(1.0, new.expires_at - (new.completed_at or new.created_at)))]
        delete = [_lease(job.id)] if new.status not in ACTIVE and job.status in ACTIVE else []
        extra = extra or Txn()
        if new.terminal and not job.terminal:  # its webhook, queued in the same step
            hook = delivery_step(new, new.completed_at or new.created_at)
            extra = Txn(expect=extra.expect, put=(*extra.put, *hook.put), delete=extra.delete,
                        add=(*extra.add, *hook.add), remove=extra.remove)  # fmt: skip
        txn = Txn(
            expect=((f"job:{job.id}", raw), *extra.expect),
            put=(*put, *extra.put),
            delete=(*delete, *extra.delete),
            add=(*add, *extra.add),
            remove=(*remove, *extra.remove),
        )
        return await self._commit(txn) == "ok"

    async def finish(self, job: Job, owner: str, new: Job, images: list[bytes], ttl_s: float) -> Job | None:
        """The attempt's end, written only if ``owner`` still runs it: its images and its
        terminal state together. ``None``: it lost the job (its images are dropped)."""
        for _ in range(SUBMIT_TRIES):
            found = await self.read(job.id)
            if found is None or found[0].owner != owner or found[0].status not in ACTIVE:
                return None
            current, raw = found
            ended = current.finished(new.status, new.completed_at or 0.0, error=new.error, images=new.images,
                                     size=new.size, model_version=new.model_version)  # fmt: skip
            if ended.status != "completed":
                images = []
            extra = Txn(put=tuple((f"job:img:{job.id}:{i}", data, ttl_s) for i, data in enumerate(images)))
            if await self.transition(current, raw, ended, extra):
                return ended
        return None

    async def hand_back(self, job_id: str, owner: str, now: float) -> bool:
        """A replica shutting down returns the job it runs (see :meth:`Job.handed_back`)."""
        found = await self.read(job_id)
        if found is None or found[0].owner != owner:
            return False
        return await self.transition(found[0], found[1], found[0].handed_back(now))

    async def update(self, job_id: str, change: str, now: float, tenant: str | None = None) -> Job | None:
        """``cancel`` or ``expire`` a job (``tenant``: only its own), retried over
        concurrent changes; the job as it is after (``None``: not found)."""
        for _ in range(SUBMIT_TRIES):
            found = await self.read(job_id)
            if found is None or (tenant is not None and found[0].tenant != tenant):
                return None
            job, raw = found
            new = job.cancelled(now) if change == "cancel" else job.expired(now)
            if await self.transition(job, raw, new):
                return new
        raise StoreUnavailable("the job kept changing: try again")

    async def delete(self, job: Job) -> None:
        await self._forget(job.id, job.tenant, job.tier, job.images)

    async def _forget(self, job_id: str, tenant: str, tier: str, images: int = 0) -> None:
        """The job, its lease, images, events and every index row, in one step."""
        keys = [f"job:{job_id}", _lease(job_id), *(f"job:img:{job_id}:{i}" for i in range(images))]
        events = await self._scan(f"ev:{job_id}", limit=100_000)
        remove = [*_rows(job_id, tenant, tier), *((f"ev:{job_id}", member) for member, _ in events)]
        await self._commit(Txn(delete=tuple(keys), remove=tuple(remove)))

    # -- housekeeping (any replica) --------------------------------------------------------

    async def reap(self, now: float, owner: str = "reaper") -> int:
        """Running jobs whose lease expired (their replica died): requeued at their old
        tag, or failed after ``max_attempts``; queued jobs past their deadline: expired;
        jobs past their retention: forgotten, with every row they left (``jx``), by one
        replica at a time (``owner``, under a short lease: the others would only repeat
        its work), batch after batch until none is due."""
        changed = 0
        running = await self._scan("run", limit=1000)
        if running:
            leases = await self._get([_lease(job_id) for job_id, _ in running])
            for (job_id, _), lease in zip(running, leases, strict=True):
                if lease is not None:
                    continue
                found = await self.read(job_id)
                if found is None:
                    await self._commit(Txn(remove=(("run", job_id),)))
                    continue
                job, raw = found
                new = job.requeued(self.config.max_attempts, now)
                guard = Txn(expect=((_lease(job_id), None),))  # not renewed meanwhile
                changed += await self.transition(job, raw, new, guard)
        for job_id, _ in await self._scan("qd", hi=now, limit=1000):
            changed += (await self.update(job_id, "expire", now)) is not None
        return changed + await self._sweep(now, owner)

    async def _sweep(self, now: float, owner: str) -> int:
        if not await self.state.lease("job:sweep", owner, SWEEP_LEASE_S):
            return 0  # another replica sweeps (or the store did not answer: next time)
        swept = 0
        try:
            for _ in range(SWEEP_BATCHES):
                due = await self._scan("jx", hi=now, limit=SWEEP)
                for member, _ in due:
                    job_id, tenant, tier = orjson.loads(member)
                    found = await self.read(job_id)  # its key may outlive the row by a ttl's rounding
                    await self._forget(job_id, tenant, tier, found[0].images if found is not None else 0)
                swept += len(due)
                if len(due) < SWEEP:
                    break
        finally:
            await self.state.release("job:sweep", owner)
        return swept
