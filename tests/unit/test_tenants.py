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
