"""The AVIF encode workers leave with their gateway, however it ends.

A real gateway-shaped process (the encode pool in a child interpreter) is SIGKILLed;
its spawned workers must be gone soon after, not blocked on their queue for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.procs import proc_stat

pytestmark = pytest.mark.integration

PARENT = textwrap.dedent(
    """
    import asyncio, sys, time
    import numpy as np
    from image_router.http import encode

    async def main() -> None:
        images = np.zeros((2, 256, 256, 3), dtype=np.uint8)
        # enough at once that the pool spawns every worker
        await asyncio.gather(*[encode.encode_images_off_loop(images, "avif", 50) for _ in range(4)])
        print(*encode._processes()._processes, flush=True)
        time.sleep(60)

    asyncio.run(main())
    """
)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z"


def test_encode_workers_exit_when_the_gateway_is_killed(tmp_path: Path) -> None:
    """Run as a service runs it: no terminal, its output to files (which the orphans
    would otherwise hold open)."""
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    workers: list[int] = []
    with (
        out_path.open("w") as out,
        err_path.open("w") as err,
        subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.DEVNULL, stdout=out, stderr=err) as parent,
    ):
        try:
            deadline = time.monotonic() + 60
            while not out_path.read_text().endswith("\n") and parent.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert parent.poll() is None, err_path.read_text()
            workers = [int(pid) for pid in out_path.read_text().split()]
            assert len(workers) == min(2, os.cpu_count() or 1) and all(_alive(pid) for pid in workers)
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [pid for pid in workers if _alive(pid)], "encode workers outlived their gateway"
        finally:
            parent.kill()
            for pid in workers:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
