"""Tenant keys and limits (pure: no clock, no sockets)."""

from __future__ import annotations

from pathlib import Path

from image_router.config.table import Tenant, key_digest, key_index
from image_router.policy.tenants import TenantState, find_tenant

ACME = Tenant("acme", (key_digest("sk-acme"),), requests_per_s=2, burst=3, images_per_day=5, max_concurrency=2)
KEYS = key_index([ACME])


def test_keys_are_found_by_digest_only() -> None:
    assert find_tenant(KEYS, "sk-acme") is ACME
    assert find_tenant(KEYS, "sk-acm") is None and find_tenant(KEYS, "") is None
    assert "sk-acme" not in repr(ACME)


def test_every_key_of_thousands_of_tenants_is_in_the_tables_index() -> None:
    """Thousands of tenants: the last one's key is found through the table's index,
    which holds every tenant's every key (a second key of a tenant included)."""
    from image_router.config import compile_text

    tenants = "".join(f"    t{i}: {{keys: [sk-tenant-key-{i:05d}-a, sk-tenant-key-{i:05d}-b]}}\n" for i in range(2000))
    text = (
        'backends: {triton: {url: "http://t:8000"}}\nmodels: {noop: {backend: triton}}\ndefault_route: noop\n'
        "tenants:\n  mode: keys\n  tenants:\n" + tenants
    )
    table = compile_text(text)
    assert len(table.tenant_keys) == 4000
    found = find_tenant(table.tenant_keys, "sk-tenant-key-01999-b")
    assert found is not None and found.name == "t1999"
    assert find_tenant(table.tenant_keys, "sk-tenant-key-02000-a") is None


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


def test_the_rate_holds_on_a_clock_of_days() -> None:
    """A monotonic clock counts from boot, and ``now + interval - now`` may round above
    ``interval``: with a burst of 1 the local count then refused every request (found
    when the two-replica test's fallback to local counting answered only 429s on this
    machine, 9 hours after boot). Any rate, burst and clock magnitude must admit an
    idle tenant's first request and exactly ``burst`` at once."""
    for rate, burst in ((20.0, 1), (3.0, 1), (7.0, 2), (0.1, 1)):
        tenant = Tenant("t", (), requests_per_s=rate, burst=burst)
        for now in (12.5, 33_255.54, 1e6 + 0.123, 9.87e7 + 0.5):
            state = TenantState()
            admitted = 0
            for _ in range(burst + 2):
                admitted += state.admit(tenant, 1, now, 0.0).allowed
                state.done()
            assert admitted == burst, (rate, burst, now)
            assert state.admit(tenant, 1, now + 1 / rate, 0.0).allowed, (rate, burst, now)


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
    from image_router.policy.tenants import limit_args, shared_decision

    tenant = Tenant("t", (), requests_per_s=2, burst=3, images_per_day=10)
    assert limit_args(tenant, 1) == [500_000, 1_500_000, 1, 10]  # microseconds
    ok = shared_decision(tenant, [1, 0, 1_000_000, 4], 0.0)  # 1 s of the 1.5 s tolerance used
    assert ok.allowed and ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-remaining-images"] == "6"
    rate = shared_decision(tenant, [0, 1, 1_400_000, 0], 0.0)  # the stored arrival is 1.4 s ahead
    assert not rate.allowed and rate.reason == "rate" and abs(rate.retry_after_s - 0.4) < 1e-9
    images = shared_decision(tenant, [0, 2, 500_000, 10], 100.0)
    assert not images.allowed and images.reason == "images" and images.headers["x-ratelimit-remaining-images"] == "0"


def test_a_heavy_tenant_queues_behind_itself_not_ahead_of_a_light_one() -> None:
    """Weighted fair queuing in the admission gate: with heavy's backlog of 10 waiting,
    light's requests are admitted every other slot, not after all of heavy's."""
    import asyncio

    from image_router.admission import AdmissionGate

    async def run() -> list[str]:
        gate = AdmissionGate(limit=1, max_queue=100)
        assert gate.try_acquire()
        order: list[str] = []

        async def wait(tenant: str, priority: int = 2) -> None:
            await gate.acquire(priority, tenant)
            order.append(tenant)

        tasks = [asyncio.create_task(wait("heavy")) for _ in range(10)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(wait("light")) for _ in range(3)]
        tasks.append(asyncio.create_task(wait("urgent", priority=1)))  # priority still comes first
        await asyncio.sleep(0)
        for _ in range(len(tasks)):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    assert order[0] == "urgent"
    light = [i for i, name in enumerate(order) if name == "light"]
    assert light == [2, 4, 6], order  # interleaved with heavy, one each


def test_a_full_queue_displaces_the_last_in_line_for_a_request_that_goes_ahead() -> None:
    import asyncio

    from image_router.admission import AdmissionGate

    async def run() -> tuple[list[bool], bool]:
        gate = AdmissionGate(limit=1, max_queue=3)
        assert gate.try_acquire()
        heavy = [asyncio.create_task(gate.acquire(2, "heavy")) for _ in range(3)]
        await asyncio.sleep(0)
        assert not gate.can_queue(2, "heavy") and gate.can_queue(2, "light")
        light = asyncio.create_task(gate.acquire(2, "light"))
        await asyncio.sleep(0)
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*heavy, light)
        displaced = heavy[2].result() is False
        return [t.result() for t in heavy[:2]], displaced and light.result()

    admitted, light_in = asyncio.run(run())
    assert admitted == [True, True] and light_in


def test_keys_from_mounted_files_and_errors_at_their_line(tmp_path: Path) -> None:
    import pytest

    from image_router.config import compile_text
    from image_router.errors import ConfigError

    key_file = tmp_path / "acme-key"
    key_file.write_text("sk-from-a-secret-file-0123\n")
    text = f"""
models: {{noop: {{backend: triton}}}}
backends: {{triton: {{url: "http://t:8000"}}}}
tenants:
  mode: keys
  tenants:
    acme: {{key_files: ["{key_file}"]}}
    beta: {{key_files: ["{tmp_path}/missing"]}}
default_route: noop
secret_dirs: ["{tmp_path}"]
"""
    with pytest.raises(ConfigError) as info:
        compile_text(text)
    assert "routes.yaml:8" in str(info.value) and "cannot read" in str(info.value)
    table = compile_text(text.replace(f'    beta: {{key_files: ["{tmp_path}/missing"]}}\n', ""))
    assert find_tenant(table.tenant_keys, "sk-from-a-secret-file-0123") is not None


def test_a_tenants_sticky_identity_is_scoped_to_it() -> None:
    from image_router.decide import steer as _tenant_steering
    from image_router.policy.match import RequestFacts

    facts = RequestFacts.of("x", None, None, {}, {"user": "alice"})
    scoped, _, _ = _tenant_steering(Tenant("acme", ()), facts, None, None)
    assert scoped.fields["user"] == "acme:alice" and scoped.fields["tenant"] == "acme"
    anonymous_user, _, _ = _tenant_steering(Tenant("acme", ()), RequestFacts.of("x", None, None, {}), None, None)
    assert anonymous_user.fields["user"] == "acme"


def test_tenants_from_a_file_of_their_own_with_errors_at_its_lines(tmp_path: Path) -> None:
    import pytest

    from image_router.config import load_file
    from image_router.errors import ConfigError

    (tmp_path / "routes.yaml").write_text(
        "models: {noop: {backend: triton}}\nbackends: {triton: {url: 'http://t:8000'}}\n"
        "tenants: {file: tenants.yaml}\ndefault_route: noop\n"
    )
    (tmp_path / "tenants.yaml").write_text("mode: keys\ntenants:\n  acme:\n    keys: [sk-acme-0123456789abcd]\n")
    table = load_file(tmp_path / "routes.yaml")
    assert table.tenant_mode == "keys" and find_tenant(table.tenant_keys, "sk-acme-0123456789abcd") is not None
    assert table.sources == (str(tmp_path / "tenants.yaml"),)
    (tmp_path / "tenants.yaml").write_text("mode: keys\ntenants:\n  acme:\n    keys: [short]\n    routes: [nowhere]\n")
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path / "routes.yaml")
    text = str(info.value)
    assert "tenants.yaml:4" in text and "16 characters" in text and "tenants.yaml:5" in text, text
    (tmp_path / "tenants.yaml").write_text("mode: nobody\n")
    with pytest.raises(ConfigError, match=r"tenants\.yaml:1"):
        load_file(tmp_path / "routes.yaml")


def test_generated_authorization_headers_find_a_tenant_only_with_its_exact_key() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from image_router.policy.tenants import bearer_key

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.text(max_size=80), st.builds(lambda k: f"Bearer {k}", st.text(max_size=60))))
    def check(header: str) -> None:
        key = bearer_key(header)
        tenant = find_tenant(KEYS, key) if key is not None else None
        assert tenant is None or key == "sk-acme"

    check()
    assert bearer_key("Bearer sk-acme") == "sk-acme" and bearer_key("bearer  sk-acme ") == "sk-acme"
    assert bearer_key("Basic sk-acme") is None and bearer_key("Bearer a b") is None and bearer_key(None) is None
