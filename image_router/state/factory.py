"""The state store a table configures, opened and checked before anything uses it."""

from __future__ import annotations

import logging
from pathlib import Path

from image_router.config.table import StateConfig
from image_router.state.base import StateStore
from image_router.state.guard import GuardedState
from image_router.state.redis import RedisState
from image_router.state.sqlite import SqliteState

__all__ = ["open_state", "reopen_state"]

log = logging.getLogger("router.state")


def open_state(config: StateConfig) -> GuardedState:
    """Open and verify: an unusable SQLite path, or a Redis that may evict, is a
    :class:`~image_router.errors.StateStoreError` naming the setting (``router serve`` exits
    2; a reload is refused and the running table keeps serving)."""
    store: StateStore
    if config.store.startswith("sqlite://"):
        path = Path(config.store.removeprefix("sqlite://")).expanduser()
        store = SqliteState(path)
        log.info("state store: %s (shared by the gateway processes of this machine; gateways on several "
                 "machines need state: {store: redis://...})", path)  # fmt: skip
    else:
        store = RedisState(config.store, config.timeout_s, config.assume_noeviction)
    guarded = GuardedState(store, config.timeout_s, config=config)
    guarded.verify()
    return guarded


def reopen_state(current: GuardedState | None, config: StateConfig | None) -> GuardedState | None:
    """At a reload: the open store when ``config`` is the same — verified again (a
    Redis's eviction policy may have been changed since) — else a new one (the caller
    closes the old once the new table is in). Raises like :func:`open_state`, before
    anything changes."""
    if current is not None and current.config is not None and current.config == config:
        current.verify()
        return current
    return open_state(config) if config is not None else None
