"""Tenant keys and limits (pure: no clock, no sockets)."""

from __future__ import annotations

from router.config.table import Tenant, key_digest
from router.policy.tenants import TenantState, find_tenant

ACME = Tenant("acme", (key_digest("sk-acme"),), requests_per_s=2, burst=3, images_per_day=5, max_concurrency=2)


def test_keys_are_found_by_digest_only() -> None:
    assert find_tenant((ACME,), "sk-acme") is ACME
    assert find_tenant((ACME,), "sk-acm") is None and find_tenant((ACME,), "") is None
    assert "sk-acme" not in repr(ACME)


def test_a_burst_then_the_rate_and_openai_headers() -> None:
    state = TenantState()
    now = 100.0
    decisions = []
    for _ in range(3):
        decisions.append(state.admit(ACME, 1, now, 0.0))
        state.done()
    assert all(d.allowed for d in decisions)
    assert [d.headers["x-ratelimit-remaining-requests"] for d in decisions] == ["2", "1", "0"]
    refused = state.admit(ACME, 1, now, 0.0)
    assert not refused.allowed and refused.reason == "rate" and 0 < refused.retry_after_s <= 0.5
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    later = state.admit(ACME, 1, now + 0.5, 0.0)  # one interval later: one more fits
    assert later.allowed


def test_images_per_day_and_concurrency() -> None:
    tenant = Tenant("t", (), images_per_day=5, max_concurrency=1)
    state = TenantState()
    first = state.admit(tenant, 4, 0.0, 86400 * 3 + 10)
    assert first.allowed and first.headers["x-ratelimit-remaining-images"] == "1"
    busy = state.admit(tenant, 1, 0.0, 86400 * 3 + 11)
    assert not busy.allowed and busy.reason == "concurrency"
    state.done()
    over = state.admit(tenant, 2, 0.0, 86400 * 3 + 12)
    assert not over.allowed and over.reason == "images" and over.retry_after_s > 86000
    next_day = state.admit(tenant, 2, 0.0, 86400 * 4 + 1)
    assert next_day.allowed and next_day.headers["x-ratelimit-remaining-images"] == "3"


def test_the_shared_stores_reply_reads_like_a_local_count() -> None:
    from router.policy.tenants import limit_args, shared_decision

    tenant = Tenant("t", (), requests_per_s=2, burst=3, images_per_day=10)
    assert limit_args(tenant, 1) == [500, 1500, 1, 10]
    ok = shared_decision(tenant, [1, 0, 1000, 4], 0.0)  # 1 s of the 1.5 s tolerance used
    assert ok.allowed and ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-remaining-images"] == "6"
    rate = shared_decision(tenant, [0, 1, 1400, 0], 0.0)  # the stored arrival is 1.4 s ahead
    assert not rate.allowed and rate.reason == "rate" and abs(rate.retry_after_s - 0.4) < 1e-9
    images = shared_decision(tenant, [0, 2, 500, 10], 100.0)
    assert not images.allowed and images.reason == "images" and images.headers["x-ratelimit-remaining-images"] == "0"
