"""Gateway CPU per request, this tree against another commit, in alternating rounds.

A change to the request path must not make it dearer; on a shared, noisy machine only
a comparison inside one run says so. This starts one real Triton (``noop``) and two
gateways on the same routes — one from a ``git worktree`` of ``--before`` (default:
``HEAD``), one from this working tree — and sends the same KServe binary requests
(what ``tritonclient.http`` sends) to each in turn, ``--rounds`` times, at one client
(``--clients``: more, one keep-alive connection each).
It prints each round's CPU per request (user + system, from /proc) and the medians.

``--path openai`` compares the OpenAI Images path instead: both gateways on one
``type: openai`` tier in front of the stand-in of `bench/peers_openai.py`, the same
``POST /v1/images/generations`` from one client and then from 32 (one keep-alive
connection each, `bench/http_load.py`).

``--path idle`` compares what each gateway costs doing nothing: both on the shipped
routes.yaml (jobs on, gRPC edge, file watching), no request sent, CPU per second over
the same ``--seconds`` windows, side by side.

    .venv/bin/python bench/before_after.py --before HEAD --rounds 5 --requests 1500
    .venv/bin/python bench/before_after.py --before HEAD --rounds 4 --requests 3000 --clients 32
    .venv/bin/python bench/before_after.py --before HEAD --path openai --rounds 4 --requests 2000
    .venv/bin/python bench/before_after.py --before HEAD --path idle --rounds 3 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from openai_peers import GATEWAY_ROUTES, Peer, start_upstream, stop
from overhead import ROOT, cpu_seconds, measure, write_routes
from peers_openai import load

from image_router.triton import TritonConfig, TritonServer
from tests.procs import GatewayProcess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="HEAD", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--path", choices=["kserve", "openai", "idle"], default="kserve")
    parser.add_argument("--seconds", type=float, default=20.0, help="--path idle: the length of each window")
    parser.add_argument("--clients", type=int, default=1, help="--path kserve: concurrent clients")
    args = parser.parse_args()
    if args.path == "openai":
        openai_path(args)
        return
    if args.path == "idle":
        idle(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-before-after-"))
    with worktree(args.before, tmp / "before") as baseline, triton_noop(tmp) as triton:
        kserve_path(args, tmp, baseline, triton)


@contextlib.contextmanager
def worktree(commit: str, path: Path) -> Iterator[Path]:
    """A ``git worktree`` of ``commit`` at ``path``, removed at the end."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


@contextlib.contextmanager
def triton_noop(tmp: Path) -> Iterator[TritonServer]:
    """A real Triton serving ``noop``, stopped at the end."""
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    try:
        triton.start()
        triton.wait_ready()
        yield triton
    finally:
        triton.stop()


def kserve_path(args: argparse.Namespace, tmp: Path, baseline: Path, triton: TritonServer) -> None:
    routes = write_routes(tmp)
    gateways: dict[str, GatewayProcess] = {}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    try:
        gateways["before"] = GatewayProcess(routes, triton.http_url, tmp / "before.log", cwd=baseline)
        gateways["after"] = GatewayProcess(routes, triton.http_url, tmp / "after.log", cwd=ROOT)
        for n in range(args.rounds):
            for name, gateway in gateways.items():
                start = cpu_seconds(gateway.process.pid)
                asyncio.run(measure(gateway.url, args.clients, args.requests))
                cpu[name].append((cpu_seconds(gateway.process.pid) - start) / (args.requests + 50) * 1000)
            print(f"round {n + 1}: before {cpu['before'][-1]:.3f} ms, after {cpu['after'][-1]:.3f} ms", flush=True)
        before, after = statistics.median(cpu["before"]), statistics.median(cpu["after"])
        print(f"median CPU per request: before {before:.3f} ms, after {after:.3f} ms ({after / before:.3f}x)")
    finally:
        for gateway in gateways.values():
            gateway.stop()


def openai_path(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-before-after-openai-"))
    with worktree(args.before, tmp / "before") as baseline:
        openai_gateways(args, tmp, baseline)


def openai_gateways(args: argparse.Namespace, tmp: Path, baseline: Path) -> None:
    upstream = start_upstream(tmp)
    env = {"HOSTED_URL": upstream.url, "HOSTED_KEY": "sk-test"}
    gateways = {}
    for name, cwd in (("before", baseline), ("after", ROOT)):
        routes, log = tmp / f"routes-{name}" / "routes.yaml", tmp / f"{name}.log"  # a directory each: watched
        routes.parent.mkdir()
        routes.write_text(GATEWAY_ROUTES)
        gateways[name] = GatewayProcess(routes, "http://127.0.0.1:9", log, env=env, cwd=cwd)
    cpu: dict[tuple[str, int], list[float]] = {(name, c): [] for name in gateways for c in (1, 32)}
    try:
        peers = {name: Peer(name, gw.url + "/v1", gw.process.pid) for name, gw in gateways.items()}
        for peer in peers.values():
            asyncio.run(load(peer, upstream.pid or 0, 32, 640, 0))  # warm-up
        for n in range(args.rounds):
            for clients in (1, 32):
                for name, peer in peers.items():  # the bench/peers_openai.py load: the same request and client
                    sample = asyncio.run(load(peer, upstream.pid or 0, clients, args.requests, 0))
                    cpu[name, clients].append(sample.cpu_s / args.requests * 1000)
                print(
                    f"round {n + 1}, c={clients}: before {cpu['before', clients][-1]:.3f} ms, "
                    f"after {cpu['after', clients][-1]:.3f} ms",
                    flush=True,
                )
        for clients in (1, 32):
            before, after = statistics.median(cpu["before", clients]), statistics.median(cpu["after", clients])
            ratio = after / before
            print(f"c={clients} median CPU per request: before {before:.3f} ms, after {after:.3f} ms ({ratio:.3f}x)")
    finally:
        for gateway in gateways.values():
            gateway.stop()
        for proc in upstream.stop:
            stop(proc)


def idle(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-before-after-idle-"))
    with worktree(args.before, tmp / "before") as baseline, triton_noop(tmp) as triton:
        idle_gateways(args, tmp, baseline, triton)


def idle_gateways(args: argparse.Namespace, tmp: Path, baseline: Path, triton: TritonServer) -> None:
    gateways: dict[str, GatewayProcess] = {}
    per_s: dict[str, list[float]] = {"before": [], "after": []}
    try:
        grpc = f"127.0.0.1:{triton.config.grpc_port}"
        for name, cwd in (("before", baseline), ("after", ROOT)):
            home = tmp / f"gateway-{name}"  # its own state directory (ROUTER_STATE_DIR: beside the log) and routes
            home.mkdir()
            routes = home / "config" / "routes.yaml"
            routes.parent.mkdir()
            shutil.copy(cwd / "routes.yaml", routes)  # its cache (relative to the working directory): in the tree
            gateways[name] = GatewayProcess(routes, triton.http_url, home / "gateway.log", cwd=cwd, triton_grpc=grpc)
        time.sleep(3)  # start-up work done
        for n in range(args.rounds):
            start = {name: cpu_seconds(gw.process.pid) for name, gw in gateways.items()}
            time.sleep(args.seconds)
            for name, gw in gateways.items():
                per_s[name].append((cpu_seconds(gw.process.pid) - start[name]) / args.seconds * 1000)
            said = ", ".join(f"{name} {per_s[name][-1]:.1f} ms/s" for name in gateways)
            print(f"round {n + 1}: {said}", flush=True)
        before, after = statistics.median(per_s["before"]), statistics.median(per_s["after"])
        print(f"median idle CPU: before {before:.1f} ms per second, after {after:.1f} ms per second")
    finally:
        for gateway in gateways.values():
            gateway.stop()


if __name__ == "__main__":
    main()
