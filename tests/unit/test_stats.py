"""The live latency estimate: p95 over a time window, seeded by the hint."""

from __future__ import annotations

from image_router.stats import LatencyStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hint_until_samples_then_p95_then_back_to_hint_when_samples_age_out() -> None:
    clock = Clock()
    stats = LatencyStats(clock, window_s=60)
    assert stats.p95("m", 0.5) == 0.5
    for i in range(100):
        stats.record("m", 0.01 * (i + 1))  # 10 ms .. 1000 ms
    assert abs(stats.p95("m", 0.5) - 0.96) < 0.011
    assert abs(stats.quantile("m", 0.5, 0.5) - 0.51) < 0.011
    clock.now += 61
    assert stats.p95("m", 0.5) == 0.5


def test_ring_is_bounded() -> None:
    clock = Clock()
    stats = LatencyStats(clock, size=10)
    for _ in range(50):
        stats.record("m", 5.0)
    for _ in range(10):
        stats.record("m", 0.1)
    assert stats.p95("m", 1.0) == 0.1
    assert stats.snapshot()["m"]["count"] == 10
