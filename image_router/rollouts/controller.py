"""The rollout controller: each replica's part in running its canaries' rollouts.

Every replica, on every request of a rollout's route, serves the live weight and counts
what each arm did (:meth:`RolloutController.observe`); on every tick it adds those
counts to the current window's counters in the shared store and reads the rollout's
state back, so all replicas serve the weight the store holds. A new weight takes
effect at a wall time two ticks after its decision (:func:`switch_s`), by when every
replica has read it: the replicas switch together, and a sticky user sent to one and
then another never flips back and forth between them. One replica at a time —
the holder of a lease with expiry — also sums the window's counters, analyses them
(:func:`image_router.policy.rollout.analyse`) and writes the next state with a
compare-and-swap on the state it read: a step is decided once even if two replicas
briefly both think they hold the lease.

The store is the state store (:mod:`image_router.state`: SQLite for one machine, a
non-evicting Redis for replicas), never the result cache: a cache may evict, and a
purge of the cache touches nothing here.

Without the store (Redis down) the rollout pauses where it is: a replica keeps serving
the last weight it read, decides nothing, and says so (status page, metrics); counts
wait in memory and are added when the store is back. A replica that starts without the
store serves the canary nothing until it can read the state: it never guesses a weight.

The state key holds the rollout spec's digest, so editing the rollout in routes.yaml
starts a new one; a restarted gateway reads the state and goes on where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from image_router.backends import ImageRequest
from image_router.config.table import Arm, Route, RoutingTable
from image_router.dispatch import Dispatcher, Served
from image_router.errors import Conflict, NotFound, RouterError, StoreUnavailable
from image_router.policy.rollout import (
    ArmCounts,
    InvalidCommand,
    RolloutState,
    Verdict,
    analyse,
    command,
    decide,
    look,
    reweighted,
    started,
)
from image_router.rollouts.health import thumbnail
from image_router.rollouts.live import THUMB_EVERY_S, LiveRollout, switch_s, tick_s
from image_router.rollouts.shadow import Shadows
from image_router.rollouts.webhook import Webhooks
from image_router.state import GuardedState

__all__ = ["RolloutController"]

log = logging.getLogger("router.rollouts")
STATE_TTL_S = 90 * 86400.0
COUNTS_TTL_S = 7 * 86400.0
STORE_BOUND_S = 1.0  # a control-plane state call: off the request path


class RolloutController:
    def __init__(
        self,
        table: Callable[[], RoutingTable],
        store: Callable[[], GuardedState | None],
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owner: str = "",
    ) -> None:
        self.table = table
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.owner = owner or f"{id(self):x}-{time.time_ns():x}"
        self.live: dict[str, LiveRollout] = {}
        self.webhooks = Webhooks()
        self.shadows = Shadows(dispatcher, table, self.rng, self._background, self._keep)
        self._routes: dict[tuple[int, float], Route] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.sync(table())

    # -- the table ------------------------------------------------------------------

    def sync(self, table: RoutingTable) -> None:
        """Follow a (re)loaded table: new rollouts start being read, edited ones start
        over (a new digest), removed ones are forgotten."""
        live: dict[str, LiveRollout] = {}
        for route in (*table.routes, table.default):
            arm = route.rollout_arm
            if arm is None or arm.rollout is None:
                continue
            old = self.live.get(route.name)
            if old is not None and old.rollout.digest == arm.rollout.digest and old.canary == arm.model:
                old.rollout = arm.rollout
                live[route.name] = old
            else:
                baseline = next(a.model for a in route.arms if not a.canary)
                live[route.name] = LiveRollout(route.name, arm.rollout, arm.model, baseline)
        self.live = live
        self._routes.clear()
        self._wake.set()

    def route_for(self, route: Route) -> Route:
        """``route`` as served now: with its rollout's live weight."""
        live = self.live.get(route.name)
        arm = route.rollout_arm
        if live is None or arm is None or arm.rollout is None or arm.rollout.digest != live.rollout.digest:
            return route
        weight = live.weight(self.wall())
        key = (id(route), weight)
        served = self._routes.get(key)
        if served is None:
            if len(self._routes) > 256:
                self._routes.clear()
            served = self._routes[key] = reweighted(route, arm, weight)
        return served

    # -- what each request did --------------------------------------------------------

    def observe(
        self, route: Route, arm: Arm, served: Served | None, error: RouterError | None = None, prompt: str = ""
    ) -> None:
        """Count one answer (or failure) of a rollout route against the arm chosen."""
        live = self.live.get(route.name)
        if live is None:
            return
        kept = live.observe(arm, served, error)
        if kept is not None and served is not None:
            self._keep(live, kept[0], arm.model, served, kept[1], prompt)

    def _keep(
        self, live: LiveRollout, side: str, model: str, served: Served, image: Any, prompt: str, pair: Any = None
    ) -> None:
        now = self.clock()
        if pair is None and now - live.last_thumb.get(side, -THUMB_EVERY_S) < THUMB_EVERY_S:
            return
        live.last_thumb[side] = now
        seed = served.seeds[0] if served.seeds else None

        async def add() -> None:
            entry = {"side": side, "model": model, "seed": seed, "prompt": prompt[:80], "at": self.wall(),
                     "image": await asyncio.to_thread(thumbnail, image)}  # fmt: skip
            if pair is not None:
                entry["baseline_image"] = await asyncio.to_thread(thumbnail, pair[0])
                entry["baseline_model"], entry["difference"] = pair[1], round(pair[2], 4)
            live.gallery.append(entry)

        self._background(add())

    def mirror(self, route: Route, arm: Arm, request: ImageRequest, served: Served) -> None:
        """In the shadow stage, maybe make ``served``'s request again on the canary
        (see :mod:`image_router.rollouts.shadow`)."""
        live = self.live.get(route.name)
        if live is not None:
            self.shadows.mirror(live, route, arm, request, served)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the ticks ----------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug here must not stop the rollouts for good
                log.exception("rollout tick failed")
            self._wake.clear()
            period = min((tick_s(live.rollout) for live in self.live.values()), default=5.0)
            # asyncio.timeout, not wait_for: 3.11's wait_for may swallow a cancel that lands
            # as the wake comes, and this loop would outlive its shutdown
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._wake.wait()

    async def tick(self) -> None:
        store = self.store()
        for live in list(self.live.values()):
            if store is None:
                self._store_down(live)
                continue
            await self._tick_one(live, store)

    def _store_down(self, live: LiveRollout) -> None:
        if live.store_ok:
            log.warning(
                "rollout of %s paused at %.4g%%: the shared store does not answer", live.route, live.weight(self.wall())
            )
            live.store_ok, live.store_down_since = False, self.wall()

    async def _flush(self, live: LiveRollout, store: GuardedState) -> None:
        for key in list(live.pending):
            counts = live.pending.pop(key)
            fields = counts.fields()
            if fields and not await store.add_counts(f"{live.key}:w{key[0]}:{key[1]}", fields, COUNTS_TTL_S,
                                                     STORE_BOUND_S):  # fmt: skip
                live.pending.setdefault(key, ArmCounts()).merge(counts)  # kept for the next tick

    async def _read(self, live: LiveRollout, store: GuardedState) -> bool:
        got = await store.get_many([live.key], STORE_BOUND_S)
        if got is None:
            self._store_down(live)
            return False
        raw = got[0]
        if raw is None and live.state is not None:
            # the store lost it (a Redis restarted without persistence, a failover to an
            # empty replica): what this replica last read goes back, not a fresh start
            restored = await store.swap(live.key, None, live.state.to_bytes(), STATE_TTL_S, STORE_BOUND_S)
            if restored is None:
                self._store_down(live)
                return False
            if restored:
                log.warning("rollout of %s: the store had lost its state; restored", live.route)
            live.store_ok, live.store_down_since = True, None
            return False  # read back next tick (restored here or by another replica)
        if raw is None:
            state = started(live.rollout, self.wall(), switch_s(live.rollout))
            created = await store.swap(live.key, None, state.to_bytes(), STATE_TTL_S, STORE_BOUND_S)
            if created is None:
                self._store_down(live)
                return False
            if not created:
                return False  # another replica started it first: read it next tick
            raw = state.to_bytes()
            self._decided(live, state.decisions[-1])
        try:
            live.state, live.raw = RolloutState.from_bytes(raw), raw
        except (ValueError, TypeError) as exc:
            log.error("rollout state of %s is unreadable (%s): left as it is", live.route, exc)
            return False
        if not live.store_ok:
            log.warning("rollout of %s: the shared store is back", live.route)
        live.store_ok, live.store_down_since = True, None
        return True

    async def _tick_one(self, live: LiveRollout, store: GuardedState) -> None:
        await self._flush(live, store)
        if not await self._read(live, store):
            return
        state = live.state
        assert state is not None
        if not state.active:
            return
        held = await store.lease(f"{live.key}:lease", self.owner, 3 * tick_s(live.rollout), STORE_BOUND_S)
        if held is None:
            self._store_down(live)
            return
        if not held:
            return
        canary_side = "s" if (state.status == "shadow" or state.paused_from == "shadow") else "c"
        base = await store.read_counts(f"{live.key}:w{state.judged_against}:b", STORE_BOUND_S)
        canary = await store.read_counts(f"{live.key}:w{state.window}:{canary_side}", STORE_BOUND_S)
        if base is None or canary is None:
            self._store_down(live)
            return
        now = self.wall()
        b, c = ArmCounts.from_fields(base), ArmCounts.from_fields(canary)
        verdict = self._judge(live, state.window, b, c)
        arms = {"baseline": b.summary(), "canary": c.summary()}
        live.verdict = {"at": now, "window": state.window, **verdict.as_dict(), "arms": arms}
        nxt = decide(live.rollout, state, verdict, now, switch_s(live.rollout))
        if nxt is None:
            return
        nxt.decisions[-1]["arms"] = arms
        data = nxt.to_bytes()
        if await store.swap(live.key, live.raw, data, STATE_TTL_S, STORE_BOUND_S):
            live.state, live.raw = nxt, data
            self._decided(live, nxt.decisions[-1])

    def _judge(self, live: LiveRollout, window: int, base: ArmCounts, canary: ArmCounts) -> Verdict:
        """The analysis at the look the counts have reached; between looks, the last
        look's verdict (a step is judged at a few looks, not at every tick: see
        :func:`image_router.policy.rollout.look_alpha`)."""
        analysis = live.rollout.analysis
        k = look(analysis, base, canary)
        last = live.looks.get(window)
        if k is None or last is None or k > last[0]:
            verdict = analyse(analysis, base, canary, k)
            if k is not None:
                live.looks = {window: (k, verdict)}
            return verdict
        return last[1]

    def _decided(self, live: LiveRollout, record: dict[str, Any]) -> None:
        action = str(record["action"])
        live.decided[action] = live.decided.get(action, 0) + 1
        log.warning(
            "rollout of %s: %s to %.4g%% (%s)", live.route, action, record["weight"], record.get("reason", record["by"])
        )
        if live.rollout.webhook:
            payload = {"route": live.route, "canary_model": live.canary, "baseline_model": live.baseline,
                       "rollout": live.rollout.digest, **record}  # fmt: skip
            self.webhooks.post(live.rollout.webhook, payload, live.rollout.webhook_secret)

    # -- operators ------------------------------------------------------------------------

    async def command(self, route: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume``, ``promote`` or ``abort``, written to the shared store
        (so every replica follows) and recorded as a decision by the operator."""
        live = self.live.get(route)
        if live is None:
            raise NotFound(f"route {route!r} has no rollout")
        store = self.store()
        for _ in range(5):  # lost a race with the deciding replica: read again
            got = None if store is None else await store.get_many([live.key], STORE_BOUND_S)
            if got is None or store is None:
                raise StoreUnavailable("the shared store does not answer: the rollout cannot be changed now")
            if got[0] is None:
                raise Conflict(f"the rollout of {route!r} has not started yet")
            state = RolloutState.from_bytes(got[0])
            try:
                nxt = command(state, action, self.wall(), delay_s=switch_s(live.rollout))
            except InvalidCommand as exc:
                raise Conflict(str(exc)) from exc
            data = nxt.to_bytes()
            swapped = await store.swap(live.key, got[0], data, STATE_TTL_S, STORE_BOUND_S)
            if swapped is None:
                raise StoreUnavailable("the shared store does not answer: the rollout cannot be changed now")
            if swapped:
                live.state, live.raw = nxt, data
                self._routes.clear()
                self._decided(live, nxt.decisions[-1])
                return live.describe(self.wall())
        raise Conflict("the rollout kept changing: try again")

    # -- what the admin API, the status page and the metrics read ---------------------------

    def describe_one(self, route: str) -> dict[str, Any]:
        live = self.live.get(route)
        if live is None:
            raise NotFound(f"route {route!r} has no rollout")
        return live.describe(self.wall())

    def describe(self) -> list[dict[str, Any]]:
        return [live.describe(self.wall()) for live in self.live.values()]

    def state(self) -> list[dict[str, Any]]:
        """For the metrics collector (no I/O, no images)."""
        return [live.metrics(self.wall()) for live in self.live.values()]

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        await self.webhooks.aclose()
