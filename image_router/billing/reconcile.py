"""What this gateway billed, reconciled with what Triton says it computed (spec B.3.6).

Triton's statistics count compute per model; ``batch_stats`` counts each *execution*
once (``inference_stats`` charges every request of a dynamic batch the batch's whole
time), so Σ ``batch_stats[].(compute_input + compute_infer + compute_output).ns`` is the
time the model's instances were busy. Per backend x replica x Triton model, over a window:

* ``triton_compute_s`` — that sum's growth (a counter that went down means Triton
  restarted: the new value is the growth);
* ``attributed_s`` — Σ ``usage.compute_s`` this gateway billed for the model (its
  :class:`~image_router.billing.tally.Tally`), split over the backend's replicas by the
  compute each answered (one replica: all of it);
* ``wasted_s`` — the time calls the gateway gave up on executed (hedge losers,
  timeouts, abandoned: ``Replica.wasted_s``; from when each began by its lane's
  account, so a call given up while queued counts 0), never billed, by reason in
  ``wasted``;
* ``unattributed_s`` = triton - attributed - wasted: warm-up, other clients of Triton,
  other gateway replicas, background work (upgrades, pre-generation, shadows), and the
  rest of work abandoned over HTTP (Triton finishes it; the gateway counted what ran
  until it gave up). Briefly negative when a read lands between an answer and Triton's record
  of it (Triton records after answering);
* ``utilisation`` = triton / (covered_s x instances): how busy the instances were.

The arithmetic is pure (:func:`triton_compute_ns`, :func:`replica_samples`,
:func:`reconcile`); :class:`Reconciler` keeps a ring of reads, one every
:data:`POLL_S`, and a report ends at a read made for it. Everything is this replica's
memory: a restart, or a reload that replaces the backend, starts the counts again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from image_router.backends.base import ImageBackend
from image_router.backends.triton import TritonBackend
from image_router.billing.tally import Tally
from image_router.config.table import RoutingTable

__all__ = [
    "KEEP",
    "MAX_WINDOW_S",
    "POLL_S",
    "Reconciler",
    "Row",
    "Sample",
    "Snapshot",
    "billed_ns",
    "instances_of",
    "read",
    "reconcile",
    "replica_samples",
    "triton_compute_ns",
    "window_seconds",
]

log = logging.getLogger("router.billing")

POLL_S = 60.0  # the spec's reconcile_interval_s, fixed until billing config carries it
MAX_WINDOW_S = 86400.0
KEEP = int(MAX_WINDOW_S // POLL_S) + 1  # a day of reads
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PARTS = ("compute_input", "compute_infer", "compute_output")

Key = tuple[str, str, str]  # backend, replica URL, Triton model


@dataclass(frozen=True, slots=True)
class Sample:
    """One replica's cumulative counts for one Triton model at one read."""

    triton_ns: int | None  # Triton's batch_stats compute; None: its statistics did not answer
    answered_ns: int = 0  # compute of the answers this gateway took from it
    wasted_s: Mapping[str, float] = field(default_factory=dict)  # reason -> seconds given up


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # the reconciler's clock
    samples: Mapping[Key, Sample]
    billed_ns: Mapping[tuple[str, str], int]  # (backend, Triton model) -> compute billed so far


@dataclass(frozen=True, slots=True)
class Row:
    backend: str
    replica: str
    model: str
    covered_s: float
    triton_compute_s: float | None  # None: Triton's statistics were not read twice in the window
    attributed_s: float
    wasted: Mapping[str, float]
    utilisation: float | None

    @property
    def wasted_s(self) -> float:
        return sum(self.wasted.values(), 0.0)

    @property
    def unattributed_s(self) -> float | None:
        return None if self.triton_compute_s is None else self.triton_compute_s - self.attributed_s - self.wasted_s

    def body(self) -> dict[str, Any]:
        unattributed = self.unattributed_s
        return {
            "backend": self.backend, "replica": self.replica, "model": self.model,
            "covered_s": round(self.covered_s, 3),
            "triton_compute_s": None if self.triton_compute_s is None else round(self.triton_compute_s, 6),
            "attributed_s": round(self.attributed_s, 6),
            "wasted_s": round(self.wasted_s, 6),
            "wasted": {reason: round(s, 6) for reason, s in sorted(self.wasted.items())},
            "unattributed_s": None if unattributed is None else round(unattributed, 6),
            "utilisation": None if self.utilisation is None else round(self.utilisation, 4),
        }  # fmt: skip


def window_seconds(text: str) -> float | None:
    """``30s``, ``15m``, ``1h``, ``1d`` (or bare seconds) as seconds; ``None`` when it is
    not one, or is not within (0, :data:`MAX_WINDOW_S`]."""
    match = re.fullmatch(r"([0-9]{1,6})([smhd]?)", text)
    if match is None:
        return None
    seconds = float(int(match[1]) * _UNIT_S[match[2] or "s"])
    return seconds if 0 < seconds <= MAX_WINDOW_S else None


def triton_compute_ns(stats: Mapping[str, Any]) -> dict[str, int]:
    """Per model (all versions), Σ ``batch_stats`` compute nanoseconds of a
    ``GET /v2/models/stats`` answer; what is not understood counts 0."""
    totals: dict[str, int] = {}
    for entry in stats.get("model_stats") or []:
        if isinstance(entry, dict):
            ns = sum(_ns(batch, part) for batch in entry.get("batch_stats") or [] for part in _PARTS)
            name = str(entry.get("name", ""))
            totals[name] = totals.get(name, 0) + ns
    return totals


def _ns(batch: Any, part: str) -> int:
    try:
        return int(batch[part]["ns"])
    except (KeyError, TypeError, ValueError):
        return 0


def grown(new: float, old: float) -> float:
    """A cumulative count's growth; one that went down was reset (a restart)."""
    return new - old if new >= old else new


def replica_samples(
    backend: str,
    replica: str,
    computed: Mapping[str, int] | None,
    answered_ns: Mapping[str, int],
    wasted_s: Mapping[tuple[str, str], float],
    table: RoutingTable,
) -> dict[Key, Sample]:
    """One replica's samples per Triton model: Triton's ``computed`` (``None``: no
    answer) beside the gateway's counts, kept per configured model and summed here over
    the models that name the same Triton model."""
    remote = {name: m.remote_name for name, m in table.models.items()}
    answered: dict[str, int] = {}
    wasted: dict[str, dict[str, float]] = {}
    for name, ns in answered_ns.items():
        answered[remote.get(name, name)] = answered.get(remote.get(name, name), 0) + ns
    for (name, reason), seconds in wasted_s.items():
        reasons = wasted.setdefault(remote.get(name, name), {})
        reasons[reason] = reasons.get(reason, 0.0) + seconds
    models = set(computed or {}) | set(answered) | set(wasted)
    return {
        (backend, replica, model): Sample(
            None if computed is None else computed.get(model, 0), answered.get(model, 0), wasted.get(model, {})
        )
        for model in models
    }


def billed_ns(tally: Tally, table: RoutingTable) -> dict[tuple[str, str], int]:
    """Compute billed so far per (backend, Triton model): every tenant, route and source."""
    billed: dict[tuple[str, str], int] = {}
    for (_, _, name, _), counts in tally.spend.items():
        model = table.models.get(name)
        if model is not None:
            key = (model.backend, model.remote_name)
            billed[key] = billed.get(key, 0) + counts[2]
    return billed


def instances_of(table: RoutingTable) -> dict[tuple[str, str], int]:
    """Instances per (backend, Triton model): the most any model naming it declares."""
    counts: dict[tuple[str, str], int] = {}
    for model in table.models.values():
        key = (model.backend, model.remote_name)
        counts[key] = max(counts.get(key, 1), model.instances)
    return counts


def reconcile(window: Sequence[Snapshot], instances: Mapping[tuple[str, str], int]) -> list[Row]:
    """A row per backend x replica x Triton model of the window's last read, from the
    earliest read in ``window`` whose statistics answered to the latest (a row says
    the span it covers; without two such reads, the gateway's side only)."""
    if not window:
        return []
    rows = []
    for key in sorted(window[-1].samples):
        seen = [snap for snap in window if key in snap.samples]
        read = [snap for snap in seen if snap.samples[key].triton_ns is not None]
        first, last = (read[0], read[-1]) if len(read) >= 2 else (seen[0], seen[-1])
        rows.append(_row(key, first, last, instances.get((key[0], key[2]), 1)))
    return rows


def _row(key: Key, first: Snapshot, last: Snapshot, instances: int) -> Row:
    a, b = first.samples[key], last.samples[key]
    span = last.at - first.at
    triton = None
    if a.triton_ns is not None and b.triton_ns is not None and span > 0:
        triton = grown(b.triton_ns, a.triton_ns) / 1e9
    wasted = {r: grown(s, a.wasted_s.get(r, 0.0)) for r, s in b.wasted_s.items()}
    busy = None if triton is None else triton / (span * max(1, instances))
    attributed = _attributed_ns(key, first, last) / 1e9
    return Row(key[0], key[1], key[2], span, triton, attributed, {r: s for r, s in wasted.items() if s > 0}, busy)


def _attributed_ns(key: Key, first: Snapshot, last: Snapshot) -> float:
    """The billed growth of ``key``'s model, times this replica's share of what the
    backend's replicas answered for it (an even share when none answered anything)."""
    backend, _, model = key
    billed = grown(last.billed_ns.get((backend, model), 0), first.billed_ns.get((backend, model), 0))
    if billed <= 0:
        return 0.0
    peers = [k for k in last.samples if k[0] == backend and k[2] == model]
    growth = {k: grown(last.samples[k].answered_ns, first.samples[k].answered_ns if k in first.samples else 0)
              for k in peers}  # fmt: skip
    total = sum(growth.values())
    return billed * (growth[key] / total if total > 0 else 1 / len(peers))


async def read(
    backends: Iterable[tuple[str, ImageBackend]], table: RoutingTable, tally: Tally, clock: Callable[[], float]
) -> Snapshot:
    """One read: every Triton backend's replicas' statistics (asked at once) beside the
    gateway's counts on those replicas and what it billed."""
    tritons = [(name, b) for name, b in backends if isinstance(b, TritonBackend)]
    answers = await asyncio.gather(*(b.replica_statistics() for _, b in tritons))
    samples: dict[Key, Sample] = {}
    for (name, _), replicas in zip(tritons, answers, strict=True):
        for replica, stats in replicas:
            computed = None if stats is None else triton_compute_ns(stats)
            samples.update(replica_samples(name, replica.url, computed, replica.answered_ns, replica.wasted_s, table))
    return Snapshot(clock(), samples, billed_ns(tally, table))


class Reconciler:
    """A ring of reads, one every ``interval_s`` once started, and reports over them."""

    def __init__(
        self,
        read: Callable[[], Awaitable[Snapshot]],
        interval_s: float = POLL_S,
        keep: int = KEEP,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.read = read
        self.interval_s = interval_s
        self.sleep = sleep
        self.ring: deque[Snapshot] = deque(maxlen=keep)
        self.task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    def start(self) -> None:
        """Read now (the baseline), then every ``interval_s``; idempotent, needs a loop."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            try:
                self.ring.append(await self.read())
            except Exception:  # a replica that does not answer is a None sample: this is a bug
                log.exception("reading Triton's statistics for the reconciliation failed")
            self._first.set()
            await self.sleep(self.interval_s)

    async def report(self, window_s: float, instances: Mapping[tuple[str, str], int]) -> list[Row]:
        """The rows of the last ``window_s``, ending at a read made now (not kept: asking
        often never shortens the ring's history)."""
        self.start()
        await self._first.wait()
        now = await self.read()
        return reconcile([s for s in self.ring if s.at >= now.at - window_s] + [now], instances)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
