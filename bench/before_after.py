"""Gateway CPU per request, this tree against another commit, in alternating rounds.

A change to the request path must not make it dearer; on a shared, noisy machine only
a comparison inside one run says so. This starts one real Triton (``noop``) and two
gateways on the same routes — one from a ``git worktree`` of ``--before`` (default:
``HEAD``), one from this working tree — and sends the same KServe binary requests
(what ``tritonclient.http`` sends) to each in turn, ``--rounds`` times, at one client.
It prints each round's CPU per request (user + system, from /proc) and the medians.

    .venv/bin/python bench/before_after.py --before HEAD --rounds 5 --requests 1500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
from pathlib import Path

from overhead import ROOT, cpu_seconds, measure, write_routes

from image_router.triton import TritonConfig, TritonServer
from tests.procs import GatewayProcess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="HEAD", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-before-after-"))
    baseline = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.before], check=True)
    routes = write_routes(tmp)
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    gateways = {
        "before": GatewayProcess(routes, triton.http_url, tmp / "before.log", cwd=baseline),
        "after": GatewayProcess(routes, triton.http_url, tmp / "after.log", cwd=ROOT),
    }
    cpu: dict[str, list[float]] = {name: [] for name in gateways}
    try:
        for n in range(args.rounds):
            for name, gateway in gateways.items():
                start = cpu_seconds(gateway.process.pid)
                asyncio.run(measure(gateway.url, 1, args.requests))
                cpu[name].append((cpu_seconds(gateway.process.pid) - start) / (args.requests + 50) * 1000)
            print(f"round {n + 1}: before {cpu['before'][-1]:.3f} ms, after {cpu['after'][-1]:.3f} ms", flush=True)
        before, after = statistics.median(cpu["before"]), statistics.median(cpu["after"])
        print(f"median CPU per request: before {before:.3f} ms, after {after:.3f} ms ({after / before:.3f}x)")
    finally:
        for gateway in gateways.values():
            gateway.stop()
        triton.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)


if __name__ == "__main__":
    main()
