"""An async image job and its states, as plain values: every transition is a pure
function of the job and the time, so the state machine is tested without a store.

::

    queued ──claim──▶ in_progress ──success──▶ completed
      │   ▲               │ ├──error───────▶ failed
      │   └─requeue───────┘ │  (lease lost while attempts < max_attempts)
      │                     └──cancel──▶ cancelling ──stopped──▶ cancelled
      │                                      └──finished first──▶ completed
      ├──cancel──▶ cancelled
      └──deadline passed──▶ expired

A terminal state is final: every transition from one returns the job unchanged (the
store writes by compare-and-set, so of two replicas finishing one job the second
loses and its result — byte-identical, the seeds being fixed — is dropped). Each
change bumps ``sequence``, the number of the job's latest event, so pollers, streams
and webhook receivers can drop what is stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ACTIVE", "STATES", "TERMINAL", "Job", "fingerprint", "new_id"]

STATES = ("queued", "in_progress", "cancelling", "completed", "failed", "cancelled", "expired")
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
ACTIVE = frozenset({"in_progress", "cancelling"})
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_s: float, random80: bytes) -> str:
    """``imgjob_`` + a ULID: 48 bits of milliseconds then 80 random bits, so ids sort by
    creation time (listing order and cursors) and never collide in practice."""
    value = (round(now_s * 1000) << 80) | int.from_bytes(random80[:10], "big")
    text = "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
    return "imgjob_" + text


def fingerprint(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of what the client asked (before seeds are drawn):
    one ``Idempotency-Key`` with another body is told apart from a retry."""
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    tenant: str  # "" in tenants: {mode: open}
    tier: str  # the logical model chosen at submission (the arm): the queue it waits in
    route: str
    request: dict[str, Any]  # prompt, n, size, width, height, steps, seeds, formats: fixed at submission
    created_at: float
    deadline_at: float
    expires_at: float
    status: str = "queued"
    tag: float = 0.0  # fair-share order in its tier's queue (lowest first)
    attempts: int = 0
    sequence: int = 1
    started_at: float | None = None
    completed_at: float | None = None
    cancel_requested_at: float | None = None
    owner: str | None = None  # the replica running it (with the lease key)
    error: dict[str, Any] | None = None
    images: int = 0  # result images stored
    size: str | None = None  # WIDTHxHEIGHT of the result
    model_version: str | None = None
    allow_downgrade: bool = False
    fingerprint: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    webhook: dict[str, Any] | None = None  # {"url", "events"}

    # -- (de)serialising -----------------------------------------------------------------

    def dump(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def load(cls, raw: bytes) -> Job:
        return cls(**orjson.loads(raw))

    @property
    def asked(self) -> int:
        """The images it asked for: each a service time, alone or in a pass."""
        return max(1, int(self.request.get("n", 1)))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    # -- transitions (pure) --------------------------------------------------------------

    def _next(self, **changes: Any) -> Job:
        return dataclasses.replace(self, sequence=self.sequence + 1, **changes)

    def claimed(self, owner: str, now: float) -> Job:
        if self.status != "queued":
            return self
        return self._next(status="in_progress", owner=owner, started_at=now, attempts=self.attempts + 1)

    def finished(self, status: str, now: float, *, error: dict[str, Any] | None = None, **result: Any) -> Job:
        """``completed`` (with ``images``, ``size``, ``model_version``), ``failed`` or
        ``expired`` (with ``error``) from a running job; a cancel asked meanwhile wins
        only over a failure (an image that finished first is kept, as the spec says)."""
        if self.terminal:
            return self
        if self.status == "cancelling" and status != "completed":
            status, error = "cancelled", {"code": "job_cancelled", "message": "cancelled by the client"}
        return self._next(status=status, completed_at=now, owner=None, error=error, **result)

    def cancelled(self, now: float) -> Job:
        """Queued: cancelled now. Running: ``cancelling`` until its replica stops it.
        Finished: unchanged (a cancel is idempotent)."""
        if self.status == "queued":
            error = {"code": "job_cancelled", "message": "cancelled by the client"}
            return self._next(status="cancelled", completed_at=now, cancel_requested_at=now, error=error)
        if self.status == "in_progress":
            return self._next(status="cancelling", cancel_requested_at=now)
        return self

    def requeued(self, max_attempts: int, now: float) -> Job:
        """Its replica was lost (the lease expired): back in the queue at its old tag, or
        ``failed`` (``worker_lost``) after ``max_attempts``; a job being cancelled is
        cancelled."""
        if self.status == "cancelling":
            return self.finished("cancelled", now)
        if self.status != "in_progress":
            return self
        if self.attempts >= max_attempts:
            error = {"code": "worker_lost", "message": f"its gateway was lost {self.attempts} times"}
            return self.finished("failed", now, error=error)
        return self._next(status="queued", owner=None)

    def handed_back(self, now: float) -> Job:
        """Its replica is shutting down: back in the queue at once, the attempt not
        counted (it was not the job's fault); a job being cancelled is cancelled."""
        if self.status == "cancelling":
            return self.finished("cancelled", now)
        if self.status != "in_progress":
            return self
        return self._next(status="queued", owner=None, attempts=max(0, self.attempts - 1))

    def expired(self, now: float) -> Job:
        if self.terminal or now < self.deadline_at:
            return self
        error = {"code": "deadline_exceeded", "message": "the job's deadline passed before it finished"}
        return self._next(status="expired", completed_at=now, owner=None, error=error)

    # -- what a client sees --------------------------------------------------------------

    def event(self) -> dict[str, Any]:
        """The event this state is announced by (``image_job.<status>``)."""
        kind = {"in_progress": "started"}.get(self.status, self.status)
        body: dict[str, Any] = {"type": f"image_job.{kind}", "sequence_number": self.sequence, "job_id": self.id}
        if self.status in ("in_progress", "cancelling"):
            body["attempt"] = self.attempts
            body["model"] = self.tier
        return body
