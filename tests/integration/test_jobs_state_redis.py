"""``commit`` and ``scan`` on a real ``redis-server`` (one Lua step): the same checks as
on SQLite (tests/unit/test_jobs_state.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from image_router.state import RedisState
from tests.procs import RedisProcess
from tests.unit.test_jobs_state import commit_and_scan

pytestmark = pytest.mark.integration


def test_commit_and_scan_on_redis(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, policy="noeviction").start()
    try:

        async def run() -> None:
            store = RedisState(server.url, 0.05)
            try:
                await commit_and_scan(store)
            finally:
                await store.aclose()

        asyncio.run(run())
    finally:
        server.stop()
