"""Replica choice: least outstanding, health, and circuits per replica and per model
(no sockets: pools are created but never connected)."""

from __future__ import annotations

from image_router.backends.replicas import ReplicaSet
from image_router.config.table import Backend, CircuitPolicy, Model

DRAFT = Model("draft", "t", "draft", None, 100.0)
NOOP = Model("noop", "t", "noop", None, 10.0)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def replica_set(n: int = 3) -> tuple[ReplicaSet, Clock]:
    clock = Clock()
    spec = Backend(
        "t",
        "triton",
        "http://r0:1",
        replicas=tuple(f"http://r{i}:1" for i in range(n)),
        circuit=CircuitPolicy(consecutive_failures=2, cooldown_s=5),
    )
    return ReplicaSet(spec, clock), clock


def test_fewest_ahead_wins_and_excluded_or_unhealthy_are_skipped() -> None:
    rs, _ = replica_set()
    r0, r1, r2 = rs.replicas
    for replica, n in ((r0, 3), (r1, 1), (r2, 2)):
        for _ in range(n):
            replica.lane(DRAFT).send(100.0)
    assert rs.choose(DRAFT, set()) is r1
    assert rs.choose(DRAFT, {r1}) is r2
    r2.healthy = False
    assert rs.choose(DRAFT, {r1}) is r0
    r0.healthy = False
    assert rs.choose(DRAFT, {r1}) is None


def test_a_model_circuit_open_on_one_replica_leaves_the_others_serving_it() -> None:
    rs, clock = replica_set(2)
    r0, r1 = rs.replicas
    for _ in range(2):
        r0.model_breaker("draft").record(clock.now, False)
    assert rs.choose(DRAFT, set()) is r1
    assert rs.choose(NOOP, set()) is r0, "other models on the replica are unaffected"
    assert rs.available("draft")
    for _ in range(2):
        r1.model_breaker("draft").record(clock.now, False)
    assert not rs.available("draft") and rs.choose(DRAFT, set()) is None
    clock.now += 5
    probe = rs.choose(DRAFT, set())
    assert probe is not None and rs.choose(DRAFT, {probe}) is not probe
    probe.model_breaker("draft").record(clock.now, True)
    assert probe.model_breaker("draft").state == "closed"


def test_snapshot_shows_health_circuits_and_load() -> None:
    rs, clock = replica_set(2)
    rs.replicas[0].breaker.record(clock.now, False)
    rs.replicas[0].breaker.record(clock.now, False)
    snap = rs.snapshot()
    assert snap[0]["circuit"] == "open" and snap[1]["circuit"] == "closed"
    assert set(snap[0]) >= {"url", "healthy", "outstanding", "served", "failed", "model_circuits"}


def test_a_replica_still_computing_abandoned_work_is_avoided() -> None:
    """Replica choice reads each replica's own queue for the model: a replica still
    computing work the gateway gave up on is avoided, and the others are unaffected."""
    rs, clock = replica_set(2)
    r0, r1 = rs.replicas
    stuck = r0.lane(DRAFT).send(clock.now)
    clock.now += 0.5
    r0.lane(DRAFT).abandon(stuck, clock.now)  # ran 0.5 s, still running there
    assert rs.choose(DRAFT, set()) is r1
    forecast = rs.forecast(DRAFT)
    assert forecast is not None and forecast.ahead == 0 and forecast.expected_s == 0.1
    assert rs.choose(NOOP, set()) is r0, "other models on the replica are unaffected"


def test_a_replica_whose_estimate_went_bad_still_gets_requests_when_idle() -> None:
    """After a freeze its lane holds inflated timeouts; idle, it is chosen by fewest
    served, so it gets the answers that correct its estimate."""
    rs, clock = replica_set(2)
    r0, r1 = rs.replicas
    for _ in range(2):
        stuck = r0.lane(DRAFT).send(clock.now)
        clock.now += 1.5
        r0.lane(DRAFT).abandon(stuck, clock.now)
    clock.now += 5
    r1.served = 10
    assert r0.lane(DRAFT).estimate.typical_s > 1.0
    assert rs.choose(DRAFT, set()) is r0
    forecast = rs.forecast(DRAFT)
    assert forecast is not None and forecast.expected_s == 0.1, "the budget reads the best replica"


def test_discovered_replicas_follow_the_addresses_and_keep_their_state() -> None:
    """``discover: dns``: each address of the host is a replica (a headless Service's
    pods); a new pod is added, a gone one removed, the others keep lanes and counts."""
    import asyncio

    answers = [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "10.0.0.3"], [], ["fd00::7"]]

    async def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("triton-headless", 8000)
        return answers.pop(0)

    spec = Backend("t", "triton", "http://triton-headless:8000", replicas=("http://triton-headless:8000",),
                   protocol="grpc", grpc_port=8001, discover=True)  # fmt: skip

    async def run() -> None:
        rs = ReplicaSet(spec, Clock(), resolve)
        assert [r.url for r in rs.replicas] == ["http://triton-headless:8000"]  # until the first answer
        await rs.discover()
        assert [r.url for r in rs.replicas] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
        survivor = rs.replicas[1]
        survivor.served = 7
        assert survivor.grpc is not None and survivor.grpc.target == "10.0.0.2:8001"
        await rs.discover()
        assert [r.url for r in rs.replicas] == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]
        assert rs.replicas[0] is survivor and survivor.served == 7
        await rs.discover()  # resolving to nothing: keep what we have
        assert [r.url for r in rs.replicas] == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]
        await rs.discover()
        assert [r.url for r in rs.replicas] == ["http://[fd00::7]:8000"]
        await rs.aclose()

    asyncio.run(run())


def test_background_work_waits_while_any_model_of_its_backend_is_busy() -> None:
    """One Triton's models share its devices: a job or an upgrade on quality is not
    started while every replica is answering something (Dispatcher.idle asks the
    backend); one idle replica is room enough."""
    from image_router.backends.pool import BackendPool
    from image_router.backends.triton import TritonBackend
    from image_router.dispatch import Dispatcher
    from image_router.stats import LatencyStats

    clock = Clock()
    spec = Backend("t", "triton", "http://r0:1", replicas=("http://r0:1", "http://r1:1"))
    backend = TritonBackend(spec, clock)
    pool = BackendPool(lambda s: backend)
    pool.sync({"t": spec})
    dispatcher = Dispatcher(pool, LatencyStats(clock), clock)
    quality = Model("quality", "t", "quality", None, 3000.0)
    r0, r1 = backend.replicas.replicas
    assert dispatcher.idle(quality) and not backend.busy()
    on_r1 = r1.lane(DRAFT).send(clock.now)  # a live draft request on r1: r0 is still idle
    assert not backend.busy() and dispatcher.idle(quality)
    on_r0 = r0.lane(NOOP).send(clock.now)  # and one on r0: no replica is idle
    assert backend.busy() and not dispatcher.idle(quality)
    assert dispatcher.idle(quality, whole_backend=False)  # what a rollout's shadow asks
    clock.now += 0.1
    r1.lane(DRAFT).done(on_r1, clock.now, ok=True)
    assert dispatcher.idle(quality)
    r0.lane(NOOP).done(on_r0, clock.now, ok=True)
