"""The canary verdict on the status page: a pure function of two latency summaries."""

from __future__ import annotations

from image_router.http.status_page import canary_verdict

BASE = {"attempts": 500.0, "p95_ms": 300.0, "error_rate": 0.01}


def test_verdicts() -> None:
    assert canary_verdict(BASE, {"attempts": 5.0, "p95_ms": 900.0}) == "collecting (5/20)"
    assert canary_verdict(BASE, {"attempts": 50.0, "p95_ms": 310.0, "error_rate": 0.015}) == "healthy"
    assert canary_verdict(BASE, {"attempts": 50.0, "p95_ms": 310.0, "error_rate": 0.05}) == "degraded: more errors"
    assert canary_verdict(BASE, {"attempts": 50.0, "p95_ms": 400.0, "error_rate": 0.0}) == "degraded: slower"
    tiny = {"attempts": 500.0, "p95_ms": 2.0, "error_rate": 0.0}
    assert canary_verdict(tiny, {"attempts": 50.0, "p95_ms": 9.0}) == "healthy", "10 ms slack for tiny latencies"
