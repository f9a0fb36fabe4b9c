"""When would a request finish if sent now? Live queue state per endpoint and model.

A budget decision must rest on what is true now. A quantile of the last minute is not:
one stall drags it up for a minute, and a tier skipped for it produces no samples that
could bring it down. So each backend endpoint keeps, per model, a :class:`Lane` — a
small model of that model's queue there, fed by the gateway's own sends and answers:

* what is executing (and since when), what is queued behind it, and work the gateway
  abandoned that the backend is still computing or will compute (Triton cannot stop a
  running request, and without a queue policy — see model_repository/ — it runs a
  queued one that nobody waits for any more, too);
* a service-time estimate, :class:`ServiceTime`: the median of the last three
  samples (one outlier never moves it, two agreeing samples do), a floor (the fastest
  recent answer) and a ceiling (the slowest);
* what each request costs, in *units of work* (:func:`work_units`: rows x pixels x
  steps, relative to the model's default shape). Samples are stored per unit and every
  request — executing, queued, abandoned, or the one being forecast — is played forward
  at its own units, so a 4-image or 1024² request is forecast as the work it is and
  does not teach the lane that the model got 4x slower;
* for a **batched pass** (``b`` rows computed together, a job tier's ``batch_rows``),
  ``T(b)``: its samples are tagged with ``b`` and teach a per-``b`` factor, the pass's
  time over ``b`` singletons' (:meth:`Lane.pass_factor`, the median of the last three),
  never the singleton estimate — a pass of 8 draft images takes ~3.5 singletons' time,
  and counted as 8 samples of a singleton it would make every interactive forecast
  2.3x too optimistic. Until a ``b`` has samples its factor is 1: ``b`` singletons,
  the safe side.

:meth:`Lane.forecast` plays the queue forward at the typical service time (``expected``),
at the fastest (``floor``: above it, the request would almost surely miss) and at the
slowest (``ceiling``: the room a fallback tier is kept, so it can still deliver). A lane
whose samples are stale (none for a while) is marked ``probe``: the budget policy may
send it one request, so a tier skipped on a bad estimate comes back within seconds.
Failed probes back the interval off (up to 16x), a good sample resets it. A lane with
no samples at all is not probed: until it has some, the hint is the operator's word.

Everything here is pure: ``now`` is passed in, nothing sleeps or reads a clock.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["Forecast", "Lane", "ServiceTime", "Ticket", "work_units"]

# Until three real samples exist the prior (the operator's latency_hint_ms) fills in:
# the typical value is a median of three, so a hint is replaced once two samples agree.
_MEDIAN_OF = 3
_KEEP = 8
# Without samples the optimistic floor is a tenth of the hint: the hint is a guess, and
# a guess must not shed load (a shared 1 s default hint shed 8 clients on a 50 ms tier).
_FLOOR_OF_PRIOR = 0.1
# A request given up after t seconds needed more than t: it is counted as this much more.
_CENSORED_GROWTH = 1.25
# An abandoned request that ran past the typical time still holds its instance; assume
# it needs at least this share of a typical service time more.
_OVERRUN_SHARE = 0.25
_MAX_BACKOFF = 16
# a pass's factor is kept within these: a sample outside is a stall or a clock artefact
_MIN_PASS_FACTOR, _MAX_PASS_FACTOR = 0.05, 4.0
# requests ahead played forward one by one over several slots; a longer line is shared
# out over them in closed form (within one request's time of the play)
_PLAYED = 8


FAR_BEYOND = 8  # times a tier's native side: past it, a size is the tier's to refuse, not to forecast


def work_units(
    rows: int,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    native_side: int | None = None,
    default_steps: int | None = None,
) -> float:
    """What a request costs relative to one image of the model's default shape:
    ``rows`` x (``width·height`` / ``native_side²``) x (``steps`` / ``default_steps``).

    A size or steps not given is the model's default (factor 1), and so is one whose
    default is not known (``native_side`` or ``default_steps`` ``None``): the lane cannot
    scale what it has no reference for. Each factor is at least 1: cost is not
    proportional below the default shape (the text encoder, the scheduler and the call
    itself cost the same for a 16² image), so a smaller request is forecast as a default
    one — never sooner than it can finish, as every request was before units existed —
    while a larger one is forecast at its full size (slightly above what it costs, the
    side that keeps a budget).

    A side over :data:`FAR_BEYOND` times the native one is not scaled either: no
    diffusion tier makes such a size (its own bounds refuse it, at once), and a
    forecast of hours would turn that clear ``400`` into a ``504``."""
    units = float(max(1, rows))
    if width and height and native_side and max(width, height) <= FAR_BEYOND * native_side:
        units *= max(1.0, width * height / (native_side * native_side))
    if steps and default_steps:
        units *= max(1.0, steps / default_steps)
    return units


class ServiceTime:
    """A fast-adapting, outlier-robust estimate of the service time of one unit of work
    (one default-shape image: :func:`work_units`); the :class:`Lane` divides its samples
    by their units and multiplies what it plays forward by theirs.

    ``typical`` (median of the last three samples, censored ones included) plans the
    attempt; ``floor`` (fastest recent answer) says what would surely miss; ``ceiling``
    (slowest recent answer) is what a fallback tier is reserved, so that it can still
    deliver when the tier before it times out under load. All three are recomputed
    when a sample arrives, not when they are read: they are read on every request."""

    __slots__ = ("answered", "ceiling_s", "floor_s", "prior_s", "recent", "touched_at", "typical_s")

    def __init__(self, prior_s: float) -> None:
        self.prior_s = prior_s
        self.recent: deque[float] = deque(maxlen=_KEEP)  # answers and censored timeouts
        self.answered: deque[float] = deque(maxlen=_KEEP)  # answers only
        self.touched_at = float("-inf")  # last sample (or censored observation)
        self._update()

    def add(self, seconds: float, now: float) -> None:
        self.recent.append(max(seconds, 0.0))
        self.answered.append(max(seconds, 0.0))
        self.touched_at = now
        self._update()

    def censored(self, at_least_s: float, now: float) -> None:
        """A request was given up after ``at_least_s`` of service: it needed more than
        that. Counted (as a little more) only when it says more than the estimate
        already does; one such never moves the median, two do."""
        self.touched_at = now
        if at_least_s > self.typical_s:
            self.recent.append(at_least_s * _CENSORED_GROWTH)
            self._update()

    def _update(self) -> None:
        last = list(self.recent)[-_MEDIAN_OF:]
        last += [self.prior_s] * (_MEDIAN_OF - len(last))
        self.typical_s: float = sorted(last)[_MEDIAN_OF // 2]
        answered = list(self.answered)
        few = len(answered) < _MEDIAN_OF
        self.floor_s: float = min([*answered, self.prior_s * _FLOOR_OF_PRIOR] if few else answered)
        self.ceiling_s: float = max([*answered, self.prior_s] if few else answered)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A request sent now: seconds until it would finish, and what that rests on."""

    expected_s: float  # the queue ahead drained at the typical service time, then its own
    floor_s: float  # the same at the fastest recent service time: above it, a sure miss
    ceiling_s: float  # the same at the slowest recent answer: what a fallback is reserved
    service_s: float  # its own typical service time (what it costs on an idle endpoint)
    service_floor_s: float  # its own fastest recent service time
    ahead: int  # requests ahead of it (executing, abandoned but running, queued)
    probe: bool = False  # idle and no fresh sample for a while: worth one request


@dataclass(eq=False, slots=True)
class Ticket:
    """One request the gateway sent down a lane."""

    sent: float
    units: float = 1.0  # its work (work_units): what it costs at the per-unit estimate
    batch: int = 1  # rows computed in one pass (1: a singleton); its units include T(b)'s factor
    nominal: float = 1.0  # its work as ``batch`` singletons (units before the factor)
    started: float | None = None  # when it (probably) began executing
    exact: bool = False  # started is known (a free slot, or right after a real answer)
    abandoned: bool = False  # given up while queued: it will still run, for nobody


class Lane:
    """One model on one endpoint: ``servers`` requests execute at once, FIFO behind them
    (Triton's ``instance_group`` count; ``None`` = no queueing, e.g. a hosted API)."""

    def __init__(self, prior_s: float, servers: int | None = 1, probe_after_s: float = 2.0) -> None:
        self.estimate = ServiceTime(prior_s)
        self.servers = servers
        self.probe_after_s = probe_after_s
        # tickets hash by identity: a dict and an ordered dict make finding and taking
        # out one O(1) (a hosted API's lane holds every call in flight, thousands at a peak)
        self._running: dict[Ticket, None] = {}
        self._queued: OrderedDict[Ticket, None] = OrderedDict()  # first in line first
        self._queued_units = 0.0  # the sum of the queued tickets' units, kept as they come and go
        self._queued_largest = 0.0  # at least the largest queued ticket's units (reset when none are)
        self._ghosts: list[float] = []  # when abandoned-but-running requests should end
        self._backoff = 1
        self._passes: dict[int, deque[float]] = {}  # b -> recent T(b) / (b singletons' time)

    # -- events ----------------------------------------------------------------------

    def pass_factor(self, batch: int) -> float:
        """A pass of ``batch`` rows' time over ``batch`` singletons' (1 for a singleton,
        and for a ``batch`` not measured yet)."""
        samples = self._passes.get(batch) if batch > 1 else None
        return sorted(samples)[len(samples) // 2] if samples else 1.0

    def send(self, now: float, units: float = 1.0, batch: int = 1) -> Ticket:
        """A request of ``units`` of work (:func:`work_units`) sent now, its rows
        computed ``batch`` to a pass."""
        self._expire(now)
        ticket = Ticket(now, max(units * self.pass_factor(batch), 1e-9), batch, max(units, 1e-9))
        if self._free_slots() > 0:
            ticket.started, ticket.exact = now, True
            self._running[ticket] = None
        else:
            self._enqueue(ticket)
        return ticket

    def done(self, ticket: Ticket, now: float, ok: bool) -> None:
        """An answer came back; ``ok`` answers are service-time samples, fast failures
        (a full queue, a refused input, a dropped connection) are not."""
        self._expire(now)
        if ticket in self._running:
            del self._running[ticket]
            if ok and ticket.exact and ticket.started is not None:  # a guessed start is no sample
                took = now - ticket.started
                if ticket.batch > 1:  # T(b): teaches the pass's factor, never the singleton estimate
                    factor = took / (ticket.nominal * self.estimate.typical_s)
                    recent = self._passes.setdefault(ticket.batch, deque(maxlen=_MEDIAN_OF))
                    recent.append(min(_MAX_PASS_FACTOR, max(_MIN_PASS_FACTOR, factor)))
                else:
                    self.estimate.add(took / ticket.units, now)
                self._backoff = 1
        elif ticket in self._queued:
            # answered while we thought it queued: whatever we thought was ahead is done
            self._dequeue(ticket)
            if ok:
                self._ghosts.clear()
        self._promote(now, exact=True)

    def abandon(self, ticket: Ticket, now: float) -> None:
        """The gateway gave up on ``ticket``. Executing, it runs on and keeps its instance
        busy a while longer; queued, it keeps its place and will run when its turn comes."""
        self._expire(now)
        if ticket in self._queued:
            ticket.abandoned = True
            return
        if ticket not in self._running:
            return
        ran = self._stop(ticket, now)
        typical = self.estimate.typical_s * ticket.units
        if self.servers is not None:
            self._ghosts.append(now + max(typical - ran, _OVERRUN_SHARE * typical))
        self._backoff = min(_MAX_BACKOFF, self._backoff * 2)
        self._promote(now, exact=True)

    def cancel(self, ticket: Ticket, now: float) -> None:
        """The gateway gave up on ``ticket`` and the server dropped it (a cancelled gRPC
        call: Triton drops it queued and the model stops within one step): it leaves
        the queue, or frees its instance now instead of running on as abandoned work."""
        self._expire(now)
        if ticket in self._queued:
            self._dequeue(ticket)
            return
        if ticket not in self._running:
            return
        self._stop(ticket, now)
        self._promote(now, exact=False)  # within a step of now, not at it: no sample

    def _stop(self, ticket: Ticket, now: float) -> float:
        """Take a running ticket out; how long it ran (a lower bound on its service
        time, which the estimate is told)."""
        del self._running[ticket]
        ran = now - (ticket.started if ticket.started is not None else ticket.sent)
        self.estimate.censored(ran / ticket.units, now)
        return ran

    # -- the forecast ----------------------------------------------------------------

    def passes(self) -> dict[str, float]:
        """T(b) as learnt: each measured ``b``'s factor (for the admin view, JSON keys)."""
        return {str(b): round(self.pass_factor(b), 3) for b in sorted(self._passes)}

    def forecast(self, now: float, extra_ahead: int = 0, units: float = 1.0) -> Forecast:
        """When a request of ``units`` of work sent now would finish, with
        ``extra_ahead`` more requests (e.g. the gateway's own admission queue, whose
        work is not known here: one unit each) in front of it."""
        ahead = self.ahead(now) + extra_ahead
        est = self.estimate
        typical, floor, ceiling = est.typical_s, est.floor_s, max(est.ceiling_s, est.typical_s)
        # only a lane with samples is probed: without any, the hint is the operator's word
        stale = now - est.touched_at >= self.probe_after_s * self._backoff
        probe = stale and ahead == 0 and bool(est.recent)
        own, own_floor, own_ceiling = typical * units, floor * units, ceiling * units
        if self.servers is None or ahead == 0:  # nothing to play forward
            return Forecast(own, own_floor, own_ceiling, own, own_floor, ahead, probe)
        expected = self._play(now, typical, extra_ahead) + own
        optimistic = self._play(now, floor, extra_ahead, low=True) + own_floor
        pessimistic = self._play(now, ceiling, extra_ahead) + own_ceiling
        return Forecast(expected, optimistic, pessimistic, own, own_floor, ahead, probe)

    def expected_s(self, now: float, extra_ahead: int = 0, units: float = 1.0) -> float:
        """:meth:`forecast`'s ``expected_s`` alone, one play instead of three: what the
        best of several lanes is picked by, before the winner's whole forecast."""
        typical = self.estimate.typical_s
        if self.servers is None or self.ahead(now) + extra_ahead == 0:
            return typical * units
        return self._play(now, typical, extra_ahead) + typical * units

    def _play(self, now: float, per_unit_s: float, extra_ahead: int, low: bool = False) -> float:
        """Seconds until a slot frees for a new request, each request ahead taking
        ``per_unit_s`` per unit of its work. Every request reads this three times, so it
        costs O(slots), not O(queue) (played one by one, 300 queued cost each forecast
        ~50 µs: bench/forecast_cost.py). One slot takes the work ahead in turn: exact.
        Over several slots, a line longer than :data:`_PLAYED` fills the earliest-free
        slots first (:func:`_level`); the play's answer is at most that level and at
        most one request below it, so ``low`` (the optimistic forecast, which the budget
        reads as "surely misses") takes the bottom of that range and never says a sure
        miss the play would not."""
        assert self.servers is not None
        frees = [max(0.0, t.started + per_unit_s * t.units - now) for t in self._running if t.started is not None]
        frees += [g - now for g in self._ghosts]
        frees += [0.0] * max(0, self.servers - len(frees))
        work_s = per_unit_s * (self._queued_units + extra_ahead)
        if len(frees) == 1:
            return frees[0] + work_s
        if len(self._queued) + extra_ahead > _PLAYED:
            level = _level(frees, work_s)
            if not low:
                return level
            largest = max(self._queued_largest, 1.0 if extra_ahead else 0.0)
            return max(min(frees), level - per_unit_s * largest)
        heapq.heapify(frees)
        for work in [t.units for t in self._queued] + [1.0] * extra_ahead:
            heapq.heapreplace(frees, frees[0] + per_unit_s * work)
        return frees[0]

    def ahead(self, now: float) -> int:
        """Requests a new one would find before it: executing, abandoned but still
        running, queued."""
        self._expire(now)
        return len(self._running) + len(self._ghosts) + len(self._queued)

    @property
    def pending(self) -> int:
        return len(self._running) + len(self._queued)

    # -- bookkeeping -------------------------------------------------------------------

    def _free_slots(self) -> int:
        if self.servers is None:
            return 1
        return self.servers - len(self._running) - len(self._ghosts)

    def _expire(self, now: float) -> None:
        """Abandoned requests whose time is up free their slot, at the time they should
        have ended (a guess: what starts then has no exact start)."""
        while self._ghosts and min(self._ghosts) <= now:
            ended = min(self._ghosts)
            self._ghosts.remove(ended)
            self._promote(ended, exact=False)

    def _promote(self, at: float, exact: bool) -> None:
        while self._queued and self._free_slots() > 0:
            ticket = self._queued.popitem(last=False)[0]
            self._left_queue(ticket)
            ticket.started, ticket.exact = max(ticket.sent, at), exact
            if ticket.abandoned:  # its answer will never be read: it ends when it should
                self._ghosts.append(ticket.started + self.estimate.typical_s * ticket.units)
            else:
                self._running[ticket] = None

    def _enqueue(self, ticket: Ticket) -> None:
        self._queued[ticket] = None
        self._queued_units += ticket.units
        self._queued_largest = max(self._queued_largest, ticket.units)

    def _dequeue(self, ticket: Ticket) -> None:
        del self._queued[ticket]
        self._left_queue(ticket)

    def _left_queue(self, ticket: Ticket) -> None:
        if self._queued:
            self._queued_units = max(0.0, self._queued_units - ticket.units)
        else:  # an empty line starts again from zero: no rounding drift carried on
            self._queued_units = self._queued_largest = 0.0


def _level(frees: list[float], work_s: float) -> float:
    """Where ``work_s`` of work brings the slots that free at ``frees`` if it always goes
    to the earliest free (water-filling): the slots below the level are filled to it."""
    ordered = sorted(frees)
    total = 0.0
    for i, free in enumerate(ordered, 1):
        total += free
        level = (total + work_s) / i
        if i == len(ordered) or level <= ordered[i]:
            return level
    return ordered[-1]  # not reached: the last slot always returns
