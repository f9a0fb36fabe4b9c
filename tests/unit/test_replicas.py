"""Replica choice: least outstanding, health, and circuits per replica and per model
(no sockets: pools are created but never connected)."""

from __future__ import annotations

from router.backends.replicas import ReplicaSet
from router.config.table import Backend, CircuitPolicy


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


def test_least_outstanding_wins_and_excluded_or_unhealthy_are_skipped() -> None:
    rs, _ = replica_set()
    r0, r1, r2 = rs.replicas
    r0.outstanding, r1.outstanding, r2.outstanding = 3, 1, 2
    assert rs.choose("draft", set()) is r1
    assert rs.choose("draft", {r1}) is r2
    r2.healthy = False
    assert rs.choose("draft", {r1}) is r0
    r0.healthy = False
    assert rs.choose("draft", {r1}) is None


def test_a_model_circuit_open_on_one_replica_leaves_the_others_serving_it() -> None:
    rs, clock = replica_set(2)
    r0, r1 = rs.replicas
    for _ in range(2):
        r0.model_breaker("draft").record(clock.now, False)
    assert rs.choose("draft", set()) is r1
    assert rs.choose("noop", set()) is r0, "other models on the replica are unaffected"
    assert rs.available("draft")
    for _ in range(2):
        r1.model_breaker("draft").record(clock.now, False)
    assert not rs.available("draft") and rs.choose("draft", set()) is None
    clock.now += 5
    probe = rs.choose("draft", set())
    assert probe is not None and rs.choose("draft", {probe}) is not probe
    probe.model_breaker("draft").record(clock.now, True)
    assert probe.model_breaker("draft").state == "closed"


def test_snapshot_shows_health_circuits_and_load() -> None:
    rs, clock = replica_set(2)
    rs.replicas[0].breaker.record(clock.now, False)
    rs.replicas[0].breaker.record(clock.now, False)
    snap = rs.snapshot()
    assert snap[0]["circuit"] == "open" and snap[1]["circuit"] == "closed"
    assert set(snap[0]) >= {"url", "healthy", "outstanding", "served", "failed", "model_circuits"}
