"""The shipped path beside the proxies, at one client and at 32, with 1 and 2 workers.

Issue 36's table, as an operator runs the gateway: `router serve` on the **shipped**
routes.yaml (inference over gRPC to Triton, as `make up` runs it; metrics and access
log on), once as one process and once with `--workers 2`, beside Envoy and nginx (the
configs of `bench/peers.py`: one worker each, a plain route to Triton) and Triton
itself, all in front of one Triton serving `noop`. Every peer gets the same KServe v2
binary `noop` request that `tritonclient.http` sends, over keep-alive connections from
`bench/http_load.py` (a client that costs little CPU: it shares the cores), at 1 and
at 32 concurrent clients, in alternating rounds. CPU is user + system time of each
proxy's whole process tree (nginx's worker, the gateway's workers) per request.

    .venv/bin/python bench/shipped_path.py [--rounds 3] [--requests 1500] [--hits]

``--hits`` measures the gateway alone: the same `POST /api/v1/generate` for a thumbnail
(the shipped `sketch` route, cached) answered from the result cache's memory after the
first miss, through 1 and 2 workers — what a second core buys when Triton is not in
the way (on this 2-core machine Triton's own `noop` is the ceiling of the KServe path).

The machine is shared and noisy: compare the ratios of one run. Needs Envoy and nginx
(`make bench` installs both); a missing one is skipped and said.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402
from http_load import Connection, request_bytes  # noqa: E402
from overhead import cpu_seconds, request_body  # noqa: E402
from peers import ENVOY, NGINX, envoy_binary, nginx_binary, wait_listening  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from image_router.triton.launcher import free_port  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

LEVELS = (1, 32)


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def tree_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    total = 0.0
    for member in tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:  # ended meanwhile
            continue
    return total


@dataclass
class Sample:
    latencies: list[float]
    elapsed_s: float
    cpu_s: float


HIT = (b'{"prompt": "a thumbnail of a lighthouse", "seed": 7}', {"content-type": "application/json"})


async def load(url: str, pid: int | None, clients: int, requests: int, hits: bool = False) -> Sample:
    body, headers = HIT if hits else request_body()
    path = "/api/v1/generate" if hits else "/v2/models/noop/infer"
    host, port, raw = request_bytes(url + path, headers, body)
    connections = [Connection(host, port, raw) for _ in range(clients)]
    latencies: list[float] = []

    async def one(connection: Connection) -> None:
        t0 = time.perf_counter()
        status = await connection.send()
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"{url} answered {status}")

    try:
        for _ in range(5):  # warm-up: every connection opened and used
            await asyncio.gather(*(one(c) for c in connections))
        latencies.clear()
        left = [requests]
        cpu0, t0 = tree_cpu(pid), time.perf_counter()

        async def worker(connection: Connection) -> None:
            while left[0] > 0:
                left[0] -= 1
                await one(connection)

        await asyncio.gather(*(worker(c) for c in connections))
        return Sample(latencies, time.perf_counter() - t0, tree_cpu(pid) - cpu0)
    finally:
        for connection in connections:
            connection.close()


Procs = list[subprocess.Popen[bytes]]


def start_proxies(tmp: Path, upstream: int) -> tuple[dict[str, tuple[str, int]], Procs, list[str]]:
    peers: dict[str, tuple[str, int]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    missing: list[str] = []
    try:
        port = free_port()
        (tmp / "envoy.yaml").write_text(ENVOY.format(port=port, upstream=upstream))
        cmd = [envoy_binary(), "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "-l", "error"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_listening(port)
        peers["Envoy"] = (f"http://127.0.0.1:{port}", procs[-1].pid)
    except SystemExit as exc:
        missing.append(f"Envoy: {exc}")
    try:
        port, prefix = free_port(), tmp / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(NGINX.format(prefix=prefix, port=port, upstream=upstream))
        cmd = [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_listening(port)
        time.sleep(0.5)  # its worker is forked after the listen
        peers["nginx"] = (f"http://127.0.0.1:{port}", procs[-1].pid)
    except SystemExit as exc:
        missing.append(f"nginx: {exc}")
    return peers, procs, missing


def report(results: dict[tuple[str, int], list[Sample]], names: list[str]) -> None:
    cols = [f"c={c} {x}" for c in LEVELS for x in ("CPU/req (rounds)", "req/s", "p50", "p99")]
    print("| path | " + " | ".join(cols) + " | CPU vs Envoy c=1 / c=32 |")
    print("|---|" + "---|" * (len(cols) + 1))
    median = {k: statistics.median(s.cpu_s / len(s.latencies) * 1000 for s in v) for k, v in results.items()}
    for name in names:
        row = []
        for c in LEVELS:
            samples = results[(name, c)]
            cpu = ", ".join(f"{s.cpu_s / len(s.latencies) * 1000:.3f}" for s in samples)
            latencies = [x for s in samples for x in s.latencies]
            rps = len(latencies) / sum(s.elapsed_s for s in samples)
            row += [f"{cpu} ms", f"{rps:,.0f}", f"{pct(latencies, 0.5):.2f} ms", f"{pct(latencies, 0.99):.2f} ms"]
        ratio = "—"
        if ("Envoy", 1) in median and not name.startswith("Triton"):
            ratio = " / ".join(f"{median[(name, c)] / median[('Envoy', c)]:.2f}x" for c in LEVELS)
        print(f"| {name} | " + " | ".join(row) + f" | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500, help="per peer, level and round")
    parser.add_argument("--routes", type=Path, default=ROOT / "routes.yaml")
    parser.add_argument("--hits", action="store_true", help="cache hits through the gateway only")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shipped-"))
    models = ["noop", "draft"] if args.hits else ["noop"]  # a hit's first request is a draft miss
    triton = TritonServer(TritonConfig(ROOT / "model_repository", models), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    procs: list[subprocess.Popen[bytes]] = []
    gateways: list[GatewayProcess] = []
    try:
        triton.wait_ready()
        grpc = f"127.0.0.1:{triton.config.grpc_port}"
        peers: dict[str, tuple[str, int | None]] = {"Triton (direct)": (triton.http_url, None)}
        for workers in (1, 2):
            home = tmp / f"gateway{workers}"  # its own cache and state directories (the shipped file's relative ones)
            home.mkdir()
            extra = ["--workers", str(workers), "--log-level", "warning"]
            gw = GatewayProcess(args.routes, triton.http_url, home / "gateway.log", extra, cwd=home, triton_grpc=grpc)
            gateways.append(gw)
            peers[f"gateway, shipped routes, {workers} worker{'s' if workers > 1 else ''}"] = (gw.url, gw.process.pid)
        missing: list[str] = []
        if args.hits:
            del peers["Triton (direct)"]
        else:
            proxies, procs, missing = start_proxies(tmp, triton.config.http_port)
            peers.update(proxies)
        time.sleep(2)  # the second gateway's workers finish starting
        results: dict[tuple[str, int], list[Sample]] = {(n, c): [] for n in peers for c in LEVELS}
        for r in range(args.rounds):
            order = list(peers) if r % 2 == 0 else list(reversed(peers))
            for name in order:
                url, pid = peers[name]
                for c in LEVELS:
                    results[(name, c)].append(asyncio.run(load(url, pid, c, args.requests, args.hits)))
            print(f"round {r + 1} of {args.rounds} done", flush=True)
        report(results, list(peers))
        print(f"\n{args.rounds} rounds of {args.requests} requests per path and level; {os.cpu_count()} cores shared "
              "by Triton, the proxies and the client.")  # fmt: skip
        for line in missing:
            print(f"skipped {line}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        for gw in gateways:
            gw.stop()
        triton.stop()


if __name__ == "__main__":
    main()
