"""The ``state:`` section: when a table has a state store, and where it is by default.
A rollout or a tenant's shared limit needs one (a SQLite file unless ``state:`` says
otherwise); nothing else opens one, and a rollout no longer brings a cache with it."""

from __future__ import annotations

from image_router.config import compile_text
from image_router.config.table import StateConfig

BASE = """
backends: {triton: {url: "http://127.0.0.1:8000"}}
models: {a: {backend: triton}, b: {backend: triton}}
default_route: a
"""
ROLLOUT = BASE + "routes: [{name: r, split: [{model: a}, {model: b, canary: true, rollout: {steps: [10, 50]}}]}]\n"
TENANTS = BASE + "tenants: {mode: keys, tenants: {acme: {keys: [sk-acme-0123456789abcdef], %s}}}\n"


def test_nothing_that_needs_state_opens_none() -> None:
    assert compile_text(BASE, env={}).state is None
    assert compile_text(TENANTS % "max_concurrency: 2", env={}).state is None, "concurrency is per replica"


def test_a_rollout_gets_a_sqlite_file_and_no_cache() -> None:
    table = compile_text(ROLLOUT, env={})
    assert table.state == StateConfig("sqlite://.router-state/state.db", 0.05, False)
    assert table.cache is None, "a rollout no longer forces a cache into existence"
    moved = compile_text(ROLLOUT, env={"ROUTER_STATE_DIR": "/var/lib/image-router/"})
    assert moved.state is not None and moved.state.store == "sqlite:///var/lib/image-router/state.db"


def test_a_tenants_shared_limits_need_state_too() -> None:
    for limit in ("requests_per_s: 5", "images_per_day: 10"):
        assert compile_text(TENANTS % limit, env={}).state is not None, limit


def test_the_state_block_is_taken_as_written() -> None:
    text = BASE + 'state: {store: "redis://:pw@redis-state:6379/1", timeout_ms: 80, assume_noeviction: true}\n'
    assert compile_text(text, env={}).state == StateConfig("redis://:pw@redis-state:6379/1", 0.08, True)
    only_timeout = compile_text(ROLLOUT + "state: {timeout_ms: 10}\n", env={}).state
    assert only_timeout == StateConfig("sqlite://.router-state/state.db", 0.01, False)
