"""CPU per request on the OpenAI Images path: the gateway beside LiteLLM and Portkey.

Starts a stand-in OpenAI Images API that answers every request at once with a 1x1 PNG
(`bench/instant_openai.py`), and in front of it the gateway (`router serve`, as shipped:
metrics and access log on, one `type: openai` tier), LiteLLM's proxy (`litellm[proxy]`,
one `openai/...` model with `api_base`) and Portkey's open-source gateway (node, its
OpenAI provider at a custom host); see `bench/openai_peers.py`. Then sends the same
`POST /v1/images/generations` body through each, and straight to the stand-in (the
floor), in alternating rounds: at one client a fixed number of requests, at 32
concurrent clients a fixed time, over keep-alive connections. Reported per proxy: CPU
per request (user + system of its processes, all threads and children, from /proc),
p50/p99 latency and throughput. Client, proxies and stand-in share this machine's cores:
compare the ratios of one run.

    .venv/bin/python bench/peers_openai.py [--rounds 2] [--per-round 300] [--seconds 5]
        [--peers-dir /tmp/router-bench-peers] [--skip litellm,portkey]

A peer that cannot start is reported with its error and left out; the gateway and the
floor are always measured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pct
from http_load import Connection, request_bytes
from instant_openai import PNG_1X1
from openai_peers import Peer, cpu_seconds, start_gateway, start_litellm, start_portkey, start_upstream, stop

try:  # the client's own CPU competes with the proxies for these cores: keep it small
    from uvloop import run
except ImportError:
    from asyncio import run

BODY = orjson.dumps(
    {"model": "img-1", "prompt": "a lighthouse at dusk", "n": 1, "size": "1024x1024", "response_format": "b64_json"}
)
GOAL = 5.0  # issue 36: at least 5x less CPU per request than the cheapest peer


@dataclass
class Sample:
    """One peer at one concurrency in one round."""

    latencies: list[float]
    elapsed_s: float
    cpu_s: float  # the proxy's; for the floor, the stand-in's own
    upstream_cpu_s: float


async def load(peer: Peer, upstream_pid: int, clients: int, requests: int, seconds: float) -> Sample:
    """``requests`` requests in all (``seconds`` == 0) or as many as ``clients`` send in
    ``seconds``, each client on its own keep-alive connection, opened and used first."""
    headers = {"content-type": "application/json", **peer.headers}
    host, port, request = request_bytes(peer.url + "/images/generations", headers, BODY)
    connections = [Connection(host, port, request) for _ in range(clients)]
    latencies: list[float] = []

    async def one(connection: Connection) -> None:
        t0 = time.perf_counter()
        status = await connection.send()
        latencies.append(time.perf_counter() - t0)
        if status != 200:  # check() has shown the answer is right; an error now is not
            raise RuntimeError(f"{peer.name} answered {status}")

    try:
        for _ in range(3):  # warm-up
            await asyncio.gather(*(one(c) for c in connections))
        latencies.clear()
        cpu0 = cpu_seconds(peer.pid) if peer.pid else 0.0
        up0, t0 = cpu_seconds(upstream_pid), time.perf_counter()
        deadline, left = t0 + seconds, [requests]

        async def worker(connection: Connection) -> None:
            while (time.perf_counter() < deadline) if seconds else left[0] > 0:
                left[0] -= 1
                await one(connection)

        await asyncio.gather(*(worker(c) for c in connections))
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(peer.pid) - cpu0 if peer.pid else 0.0
        return Sample(latencies, elapsed, cpu, cpu_seconds(upstream_pid) - up0)
    finally:
        for connection in connections:
            connection.close()


def check(peer: Peer) -> None:
    """The peer answers the stand-in's image, byte for byte, in OpenAI's shape: a
    misconfigured proxy answering errors fast would otherwise look cheap."""
    headers = {"content-type": "application/json", **peer.headers}
    response = httpx.post(peer.url + "/images/generations", content=BODY, headers=headers, timeout=60)
    try:
        image = orjson.loads(response.content)["data"][0]["b64_json"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        image = None
    if response.status_code != 200 or image != PNG_1X1:
        raise RuntimeError(f"{peer.name} answered {response.status_code}: {response.text[:300]}")


def start_peers(tmp: Path, upstream: Peer, args: argparse.Namespace, peers: list[Peer]) -> list[str]:
    """Start and check every proxy into ``peers`` (the caller stops them); the errors
    of those that could not start or answered wrong."""
    peers.append(start_gateway(tmp, upstream.url))
    check(peers[0])
    starters = {
        "litellm": lambda: start_litellm(tmp, upstream.url, args.peers_dir / "litellm"),
        "portkey": lambda: start_portkey(tmp, upstream.url, args.peers_dir / "portkey"),
    }
    failed = []
    for name, start in starters.items():
        if name in args.skip:
            continue
        try:
            peer = start()
        except (RuntimeError, OSError) as exc:  # reported, and the run goes on without it
            failed.append(f"{name}: {exc}")
            continue
        peers.append(peer)
        try:
            check(peer)
        except (RuntimeError, httpx.HTTPError) as exc:
            failed.append(f"{name}: {exc}")
            for proc in peers.pop().stop:
                stop(proc)
    return failed


def cell(samples: list[Sample]) -> tuple[list[float], float, float, float]:
    """CPU ms per request per round; p50, p99 (ms) over all rounds; requests per second."""
    cpu = [s.cpu_s / len(s.latencies) * 1000 for s in samples]
    latencies = [x for s in samples for x in s.latencies]
    rps = len(latencies) / sum(s.elapsed_s for s in samples)
    return cpu, pct(latencies, 0.5), pct(latencies, 0.99), rps


def report(results: dict[tuple[str, int], list[Sample]], names: list[str], levels: tuple[int, ...]) -> None:
    head = [f"c={c} {col}" for c in levels for col in ("CPU/req, per round", "p50", "p99", "req/s")]
    print("| proxy | " + " | ".join(head) + " | CPU vs gateway, " + " / ".join(f"c={c}" for c in levels) + " |")
    print("|---|" + "---|" * (len(head) + 1))
    median = {key: statistics.median(cell(s)[0]) for key, s in results.items()}
    for name in names:
        cols, ratios = [], []
        for c in levels:
            cpu, p50, p99, rps = cell(results[(name, c)])
            cols += [", ".join(f"{x:.3f}" for x in cpu) + " ms", f"{p50:.2f} ms", f"{p99:.2f} ms", f"{rps:,.0f}"]
            ratios.append(f"{median[(name, c)] / median[('gateway', c)]:.2f}x" if median[("gateway", c)] else "—")
        floor = name.startswith("direct")
        label = f"{name}, its own CPU" if floor else name
        print(f"| {label} | " + " | ".join(cols) + " | " + ("—" if floor else " / ".join(ratios)) + " |")
    for c in levels:
        up = max(s.upstream_cpu_s / len(s.latencies) * 1000 for n in names for s in results[(n, c)])
        print(f"\nc={c}: the stand-in's own CPU per request, in any row: at most {up:.3f} ms.", end="")
    print()
    peers = [n for n in names if n != "gateway" and not n.startswith(("direct", "floor"))]  # floors: no product
    for c in levels:
        if not peers:
            print(f"c={c}: no peer measured; the goal ({GOAL:.0f}x less CPU than the cheapest peer) is not checked.")
            continue
        cheapest = min(peers, key=lambda n: median[(n, c)])
        ratio = median[(cheapest, c)] / median[("gateway", c)]
        verdict = "met" if ratio >= GOAL else "not met"
        print(f"c={c}: the gateway uses {ratio:.2f}x less CPU per request than {cheapest}, the cheapest peer "
              f"(goal >= {GOAL:.0f}x: {verdict}).")  # fmt: skip


def parse_with_peers(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser``'s arguments with ``--peers-dir`` and ``--skip`` (a set), which every
    script that starts the peers takes (:func:`start_peers` reads them)."""
    parser.add_argument("--peers-dir", type=Path, default=Path("/tmp/router-bench-peers"))
    parser.add_argument("--skip", default="", help="comma-separated: litellm, portkey")
    args = parser.parse_args()
    args.skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=300, help="requests per proxy per round at one client")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per proxy per round at 32 clients")
    parser.add_argument("--clients", type=int, default=32, help="the second concurrency measured, after one")
    args = parse_with_peers(parser)
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-openai-"))
    upstream = start_upstream(tmp)
    peers: list[Peer] = []
    try:
        for line in start_peers(tmp, upstream, args, peers):
            print(f"left out: {line}", file=sys.stderr)
        floor = Peer(upstream.name, upstream.url, upstream.pid)
        everyone = [*peers, floor]
        levels = (1, args.clients)
        results: dict[tuple[str, int], list[Sample]] = {(p.name, c): [] for p in everyone for c in levels}
        for _ in range(args.rounds):
            for c in levels:
                for peer in everyone:
                    seconds = args.seconds if c > 1 else 0.0
                    sample = run(load(peer, upstream.pid or 0, c, args.per_round, seconds))
                    results[(peer.name, c)].append(sample)
        report(results, [p.name for p in everyone], levels)
        print(f"\n{args.rounds} rounds; per proxy and round {args.per_round} requests at c=1, {args.seconds:g} s at "
              f"c={args.clients}, after 3 warm-up requests per connection. Logs: {tmp}")  # fmt: skip
    finally:
        for peer in [*peers, upstream]:
            for proc in peer.stop:
                stop(proc)


if __name__ == "__main__":
    main()
