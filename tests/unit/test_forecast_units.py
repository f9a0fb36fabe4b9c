"""Forecasts per unit of work (image_router.policy.forecast.work_units and the Lane): a request
for 4 images, or at 4x the pixels, is forecast as the work it is, its sample teaches the
lane the cost of one unit, and the budget policy on virtual time never answers later
than a budget allows with such requests in the mix."""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from image_router.backends import triton as triton_backend
from image_router.backends.base import ImageRequest, ImageResult
from image_router.backends.replicas import Replica
from image_router.backends.triton import TritonBackend
from image_router.config.table import Backend, Model
from image_router.errors import BackendError, BackendTimeout
from image_router.policy.budget import plan_attempt
from image_router.policy.forecast import Lane, Ticket, work_units
from tests.virtual_time import virtual_time

# -- the arithmetic ------------------------------------------------------------------------


def test_units_are_rows_times_pixels_times_steps_against_the_default_shape() -> None:
    assert work_units(1) == 1.0
    assert work_units(4) == 4.0
    assert work_units(1, 128, 128, native_side=64) == 4.0  # 4x the pixels
    assert work_units(2, 128, 64, 8, native_side=64, default_steps=4) == 2 * 2 * 2
    assert work_units(3, 1024, 1024) == 3.0, "no default side known: rows only"
    assert work_units(1, steps=40) == 1.0, "no default steps known: not scaled"


def test_smaller_than_the_default_counts_as_the_default() -> None:
    """Below the default shape cost is not proportional (fixed parts): never forecast
    a small request sooner than a default one, as before units existed."""
    assert work_units(1, 16, 16, 1, native_side=64, default_steps=4) == 1.0
    assert work_units(2, 32, 128, native_side=64) == 2.0


# -- the lane --------------------------------------------------------------------------------


def test_a_four_image_sample_teaches_the_cost_of_one_image() -> None:
    lane = Lane(prior_s=0.1)
    now = 1000.0
    for _ in range(3):
        ticket = lane.send(now, units=4.0)
        now += 0.2  # 4 images at 50 ms
        lane.done(ticket, now, ok=True)
    assert lane.estimate.typical_s == pytest.approx(0.05)
    assert lane.forecast(now).expected_s == pytest.approx(0.05)
    four = lane.forecast(now, units=4.0)
    assert four.expected_s == pytest.approx(0.2) and four.service_s == pytest.approx(0.2)
    assert four.floor_s == pytest.approx(0.2) and four.ceiling_s == pytest.approx(0.2)


def test_work_ahead_is_played_forward_at_its_own_units() -> None:
    lane = Lane(prior_s=0.05)
    now = 1000.0
    lane.send(now, units=8.0)  # executing: 0.4 s
    lane.send(now, units=4.0)  # queued: 0.2 s
    f = lane.forecast(now + 0.1, units=2.0)
    assert f.ahead == 2
    assert f.expected_s == pytest.approx(0.3 + 0.2 + 0.1)
    assert lane.forecast(now + 0.1, extra_ahead=1).expected_s == pytest.approx(0.3 + 0.2 + 0.05 + 0.05)


def test_a_batched_pass_teaches_t_of_b_and_never_the_singleton_estimate() -> None:
    """Passes of 8 rows that take 3.5 singletons' time: the lane learns the factor for
    b = 8 (the median of the last three) and keeps a singleton at 50 ms; a singleton
    queued behind a pass of 8 is forecast at the pass's learnt time, not 8 singletons'.
    Before any sample a pass counts as b singletons (the safe side)."""
    lane = Lane(prior_s=0.05)
    now = 1000.0
    for _ in range(3):
        single = lane.send(now)
        now += 0.05
        lane.done(single, now, ok=True)
    assert lane.pass_factor(8) == 1.0, "unmeasured: 8 singletons"
    first = lane.send(now, units=8.0, batch=8)
    assert first.units == pytest.approx(8.0)
    for took in (0.175, 0.9, 0.175):  # one stalled pass does not move the median
        lane.done(first, now + took, ok=True)
        now += took
        first = lane.send(now, units=8.0, batch=8)
    assert lane.estimate.typical_s == pytest.approx(0.05), "a pass is never a singleton's sample"
    assert lane.pass_factor(8) == pytest.approx(0.175 / 0.4)
    assert lane.passes() == {"8": 0.438}
    assert first.units == pytest.approx(3.5)
    behind = lane.forecast(now)
    assert behind.ahead == 1 and behind.expected_s == pytest.approx(0.175 + 0.05)
    assert lane.forecast(now, units=8.0).service_s == pytest.approx(0.4), "a singleton's 8 rows: 8 singletons"


def test_abandoned_work_holds_the_instance_for_its_own_units() -> None:
    lane = Lane(prior_s=0.05)
    ticket = lane.send(1000.0, units=4.0)
    lane.abandon(ticket, 1000.05)  # ran 50 ms of its 200: ~150 ms more
    assert lane.forecast(1000.05).expected_s == pytest.approx(0.15 + 0.05, abs=0.01)


def test_a_censored_timeout_is_counted_per_unit() -> None:
    lane = Lane(prior_s=0.05)
    ticket = lane.send(1000.0, units=4.0)
    lane.abandon(ticket, 1000.4)  # 0.4 s for 4 units: at least 0.1 s per unit
    assert list(lane.estimate.recent) == [pytest.approx(0.1 * 1.25)]


# -- budgets on virtual time --------------------------------------------------------------

PER_UNIT_S = {"preview": 0.5, "draft": 0.05}  # what one default-shape image takes
MODELS = {
    name: Model(name, "t", name, None, 1000 * per_unit, native_side=side)
    for (name, per_unit), side in zip(PER_UNIT_S.items(), (128, 64), strict=True)
}
CHAIN = ("preview", "draft")
BUDGET_S = 2.0
PASS_FACTOR = 0.44  # a pass of 8 draft rows takes ~3.5 singletons' time (docs/batching.md)


def fake_backend() -> TritonBackend:
    """One replica with one instance per model, first come first served: a call ends its
    model's per-unit time x the request's units after the work ahead of it ends, and
    work the caller gave up on still runs (Triton over HTTP). A call that would end past
    the time it was given times out then."""
    b = TritonBackend(Backend("t", "triton", "http://r0:1"), asyncio.get_running_loop().time)
    b.replicas.start = lambda: None  # type: ignore[method-assign]
    busy_until = dict.fromkeys(PER_UNIT_S, 0.0)

    async def call(replica: Replica, model: Model, request: ImageRequest, timeout_s: float, priority: int | None):  # type: ignore[no-untyped-def]
        now = asyncio.get_running_loop().time()
        rows = len(request.prompts)
        side = request.width or model.native_side or 64
        work = PER_UNIT_S[model.name] * rows * max(1.0, side * side / (model.native_side or 64) ** 2)
        if request.rows_per_pass > 1:  # a batched pass: T(b) is a share of b singletons' time
            work *= PASS_FACTOR
        ends = busy_until[model.name] = max(now, busy_until[model.name]) + work
        await asyncio.sleep(min(ends, now + timeout_s) - now)
        if ends > now + timeout_s:
            raise BackendTimeout(f"{model.name} timed out")
        return ImageResult(np.zeros((rows, 1, 1, 3), np.uint8), "1")

    b._call_http = call  # type: ignore[method-assign]
    return b


async def serve(b: TritonBackend, request: ImageRequest, units: Callable[[Model, ImageRequest], float]) -> str:
    """The gateway's walk down the chain (plan, attempt with its timeout, next tier on
    a failure): ``answered`` (in time), ``late`` (after the deadline), ``refused`` (up
    front, or once no tier could still make it) or ``missed`` (every try failed: a 504
    after the client waited)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUDGET_S
    tiers = list(CHAIN)
    tried = False
    while tiers:
        forecasts = {name: b.forecast(MODELS[name], 0, units(MODELS[name], request)) for name in tiers}
        usable = {name: f for name, f in forecasts.items() if f is not None}  # an open circuit: skipped
        plan = plan_attempt(list(usable), deadline - loop.time(), usable.__getitem__)
        if plan.attempt is None:
            break
        name = plan.attempt.model
        tried = True
        try:
            async with asyncio.timeout(plan.attempt.timeout_s):
                await b.generate(MODELS[name], request, plan.attempt.timeout_s)
            return "answered" if loop.time() <= deadline + 1e-9 else "late"
        except (TimeoutError, BackendError):
            tiers = tiers[tiers.index(name) + 1 :]
    return "missed" if tried else "refused"


async def traffic(units: Callable[[Model, ImageRequest], float]) -> Counter[str]:
    """Three clients, each a mix of 1- and 4-image requests at the default and 4x the
    pixels: what became of each request."""
    b = fake_backend()
    shapes = [(1, None), (4, None), (1, 128), (4, 128), (1, None), (2, 128)]

    async def client(offset: int) -> list[str]:
        out = []
        for i in range(12):
            rows, side = shapes[(i + offset) % len(shapes)]
            request = ImageRequest(("a cat",) * rows, tuple(range(rows)), None, side, side)
            out.append(await serve(b, request, units))
        return out

    results = await asyncio.gather(*(client(k) for k in range(3)))
    return Counter(outcome for result in results for outcome in result)


@virtual_time
async def test_with_many_images_and_large_sizes_no_answer_is_later_than_the_budget() -> None:
    """n=4 and 4x-pixel requests beside single ones: every request is answered within
    its budget, or refused up front; none is started where it cannot finish and then
    fails the client after the whole budget."""
    outcomes = await traffic(triton_backend.request_units)
    assert outcomes["late"] == 0 and outcomes["missed"] == 0, outcomes
    assert outcomes["answered"] >= 30, outcomes


@virtual_time
async def test_the_same_traffic_forecast_per_request_misses_budgets() -> None:
    """The scenario above discriminates: with every request counted as one unit (the
    lane before units), 4-image requests are started where they cannot finish."""
    original = triton_backend.request_units
    try:
        triton_backend.request_units = lambda model, request: 1.0
        outcomes = await traffic(lambda model, request: 1.0)
    finally:
        triton_backend.request_units = original
    assert outcomes["missed"] > 0, outcomes


async def beside_batched_passes() -> tuple[Counter[str], Lane]:
    """The interactive clients of :func:`traffic` (single images, n=4, 4x the pixels)
    while a background of jobs sends 8-row batched passes to draft back to back; and
    the draft lane afterwards."""
    b = fake_backend()
    stop = asyncio.Event()

    async def background() -> None:
        job = ImageRequest(("a job",) * 8, tuple(range(8)), rows_per_pass=8)
        while not stop.is_set():
            await b.generate(MODELS["draft"], job, 60.0)
            await asyncio.sleep(0.2)

    behind = asyncio.ensure_future(background())
    shapes = [(1, None), (4, None), (1, 128), (1, None), (2, 128), (1, None)]

    async def client(offset: int) -> list[str]:
        out = []
        for i in range(12):
            rows, side = shapes[(i + offset) % len(shapes)]
            request = ImageRequest(("a cat",) * rows, tuple(range(rows)), None, side, side)
            out.append(await serve(b, request, triton_backend.request_units))
        return out

    results = await asyncio.gather(*(client(k) for k in range(3)))
    stop.set()
    await behind
    (replica,) = b.replicas.replicas
    return Counter(outcome for result in results for outcome in result), replica.lane(MODELS["draft"])


@virtual_time
async def test_beside_batched_passes_no_answer_is_later_than_the_budget() -> None:
    """Batched passes on the draft lane learn their own T(8) and count at it: the
    interactive requests beside them are answered within budget or refused up front,
    and the lane's singleton estimate is still a singleton's (a pass taken for eight
    singletons' samples would teach it T(8)/8, 2.3x too fast)."""
    outcomes, draft = await beside_batched_passes()
    assert outcomes["late"] == 0 and outcomes["missed"] == 0, outcomes
    assert outcomes["answered"] >= 25, outcomes
    assert draft.estimate.typical_s == pytest.approx(PER_UNIT_S["draft"], rel=0.05)
    assert draft.pass_factor(8) == pytest.approx(PASS_FACTOR, rel=0.05)


def test_a_size_far_beyond_the_tier_and_an_upscaled_request_count_their_rows() -> None:
    """4096² on a 64² tier is the tier's to refuse (a clear 400), not hours to forecast;
    an upscaled request is made at the tier's native side."""
    from image_router.backends.base import ImageRequest, request_units
    from image_router.config.table import Model

    assert work_units(1, 4096, 4096, native_side=64) == 1.0
    assert work_units(1, 512, 512, native_side=64) == 64.0, "8x the side is still forecast"
    model = Model("draft", "t", "draft", None, 100.0, native_side=64)
    assert request_units(model, ImageRequest(("a",) * 2, width=256, height=256)) == 2.0 * 16
    assert request_units(model, ImageRequest(("a",) * 2, width=256, height=256, upscale=True)) == 2.0


def test_steps_count_where_the_tier_says_its_default() -> None:
    """``default_steps`` in routes.yaml makes a 40-step request on a 10-step tier four
    units; without it steps are not counted (no reference to scale by)."""
    from image_router.backends.base import ImageRequest, request_units
    from image_router.config import compile_text

    table = compile_text(
        'backends: {t: {url: "http://t:1"}}\n'
        "models:\n  preview: {backend: t, native_side: 128, default_steps: 10}\n  other: {backend: t}\n"
        "default_route: preview\n",
        env={},
    )
    request = ImageRequest(("a",), steps=40)
    assert request_units(table.models["preview"], request) == 4.0
    assert request_units(table.models["other"], request) == 1.0


def _played(frees: list[float], per_unit_s: float, ahead: list[float]) -> float:
    """The plain play the lane once did for every forecast: each request ahead, in
    order, on the slot that frees first; when one frees for a newcomer."""
    heap = list(frees)
    heapq.heapify(heap)
    for units in ahead:
        heapq.heapreplace(heap, heap[0] + per_unit_s * units)
    return heap[0]


@pytest.mark.parametrize("servers", [1, 2, 4])
@pytest.mark.parametrize("queued", [0, 3, 8, 9, 40, 300])
def test_the_line_ahead_is_forecast_in_closed_form_within_one_request_of_playing_it(servers: int, queued: int) -> None:
    """One slot takes the line in turn (the closed form is the play). Over several
    slots a line longer than a few fills the earliest-free slots first: the expected
    and pessimistic forecasts are at most one request above the play, the optimistic
    one never above it (the budget reads it as "surely misses"), however uneven the
    slots — one here runs a request 16 to 64 times the others'."""
    rng = np.random.default_rng(servers * 1000 + queued)
    lane = Lane(prior_s=0.05, servers=servers)
    now = 100.0
    sizes = [64.0] + [float(rng.choice([1.0, 2.0, 4.0])) for _ in range(servers + queued - 1)]
    tickets = [lane.send(now + i * 1e-3, units=units) for i, units in enumerate(sizes)]
    now += 0.01
    for _ in range(3):  # and again as answers come back and the line moves up
        _check_against_the_play(lane, tickets, now, servers, max(sizes))
        first = next((t for t in tickets if t.started is not None and t.units < 64), None)
        if first is None:
            break
        tickets.remove(first)
        now += 0.01
        lane.done(first, now, ok=True)


def _check_against_the_play(lane: Lane, tickets: list[Ticket], now: float, servers: int, largest: float) -> None:
    extra = 5
    running = [t for t in tickets if t.started is not None]
    line = [t.units for t in tickets if t.started is None] + [1.0] * extra
    assert len(running) == min(servers, len(tickets))
    forecast = lane.forecast(now, extra_ahead=extra)
    estimate = lane.estimate
    for per_unit_s, got, low in (
        (estimate.typical_s, forecast.expected_s, False),
        (estimate.floor_s, forecast.floor_s, True),
        (max(estimate.ceiling_s, estimate.typical_s), forecast.ceiling_s, False),
    ):
        frees = [max(0.0, t.started + per_unit_s * t.units - now) for t in running if t.started is not None]
        exact = _played(frees + [0.0] * (servers - len(frees)), per_unit_s, line)
        waited = got - per_unit_s  # less its own service
        if servers == 1 or len(line) <= 8:
            assert waited == pytest.approx(exact)
        elif low:
            assert exact - per_unit_s * largest - 1e-9 <= waited <= exact + 1e-9
        else:
            assert exact - 1e-9 <= waited <= exact + per_unit_s * max(line) + 1e-9


def test_replicas_are_compared_by_expected_finish_and_the_winners_forecast_is_whole() -> None:
    """The best of several replicas is picked by ``Lane.expected_s`` (one play, not
    three) and only its whole forecast is made: the same forecast as making every
    replica's and taking the earliest expected, for lanes of any shape and state."""
    from image_router.backends.replicas import ReplicaSet

    rng = np.random.default_rng(11)
    now = [100.0]
    for case in range(60):
        n = int(rng.integers(2, 7))
        spec = Backend("t", "triton", "http://r0:1", replicas=tuple(f"http://r{i}:1" for i in range(n)))
        replicas = ReplicaSet(spec, lambda: now[0])
        model = Model("draft", "t", "draft", None, 100.0, instances=int(rng.integers(1, 4)))
        for replica in replicas.replicas:
            lane = replica.lane(model)
            for _ in range(int(rng.integers(0, 12))):
                ticket = lane.send(now[0], units=float(rng.choice([1.0, 2.0, 4.0])))
                if rng.random() < 0.3:
                    lane.done(ticket, now[0] + float(rng.random()), ok=True)
                elif rng.random() < 0.2:
                    lane.abandon(ticket, now[0] + 0.01)
            now[0] += 0.001
        extra, units = int(rng.integers(0, 9)), float(rng.choice([1.0, 3.0]))
        every = [r.lane(model).forecast(now[0], -(-extra // n), units) for r in replicas.replicas]
        for replica in replicas.replicas:
            lane = replica.lane(model)
            assert lane.expected_s(now[0], extra, units) == lane.forecast(now[0], extra, units).expected_s
        assert replicas.forecast(model, extra, units) == min(every, key=lambda f: f.expected_s), case
