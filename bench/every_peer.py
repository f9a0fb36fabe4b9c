"""Every peer in one run, both paths: the numbers issue 36 asks to see side by side.

One run, one machine state, rounds alternated, two tables:

* **KServe path** — one Triton (`noop`); the gateway on the **shipped** routes.yaml as
  `make up` runs it (1 and 2 workers), Envoy and nginx (the configs of
  `bench/peers.py`), and the two floors of a Python proxy (`bench/asgi_floor.py`: a bare
  ASGI app and a one-route Starlette app, each forwarding with the gateway's own
  HTTP/1.1 client), beside Triton itself; the KServe v2 binary `noop` request that
  `tritonclient.http` sends (what `bench/shipped_path.py` measures).
* **OpenAI Images path** — a stand-in OpenAI API answering a 1x1 PNG at once
  (`bench/instant_openai.py`); the gateway with one `type: openai` tier, LiteLLM's proxy
  and Portkey's gateway (`bench/openai_peers.py`), the bare ASGI relay as the floor,
  beside the stand-in itself; `POST /v1/images/generations` (what
  `bench/peers_openai.py` measures).

Every proxy first takes a warm-up pass that is not counted (a cold Portkey ran slower in
its first round, which once flattered the gateway's ratio). Each cell is 1 and 32
concurrent clients over keep-alive connections; CPU is the
user + system time of each proxy's whole process tree per request, from /proc. The
client, the proxies and the upstreams share this machine's cores: compare the ratios
of one run, not absolute times across runs.

    .venv/bin/python bench/every_peer.py [--rounds 3] [--requests 1500] [--per-round 1000]
        [--seconds 5] [--peers-dir /tmp/router-bench-peers] [--skip litellm,portkey]

Needs what `make bench` installs (Envoy, nginx) and the OpenAI peers as
`bench/openai_peers.py` says; a peer that cannot start is named and left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import peers_openai  # noqa: E402
import shipped_path  # noqa: E402
from openai_peers import Peer, start_upstream, stop  # noqa: E402
from peers import floor_command, wait_listening  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from image_router.triton.launcher import free_port  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

FLOORS = {"floor: bare ASGI": "asgi_floor:app", "floor: one-route Starlette": "asgi_floor:starlette_app"}
Stoppable = subprocess.Popen[bytes] | GatewayProcess


def halt(proc: Stoppable) -> None:
    """Stop one thing this run started: a process group of its own as
    `bench/openai_peers.py` does, anything else (Envoy, nginx) by its pid."""
    if isinstance(proc, subprocess.Popen) and proc.poll() is None and os.getpgid(proc.pid) != proc.pid:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    stop(proc)


def _pid(proc: Stoppable) -> int:
    return proc.process.pid if isinstance(proc, GatewayProcess) else proc.pid


def start_floor(app: str, upstream: str, log: Path, stops: list[Stoppable]) -> str:
    """``bench/asgi_floor.py``'s ``app`` forwarding every request to ``upstream``
    (``host:port``), in a session of its own; its URL."""
    port = free_port()
    with open(log, "wb") as out:
        env = {**os.environ, "UPSTREAM": upstream}
        proc = subprocess.Popen(floor_command(app, port), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    stops.append(proc)  # stopped with the rest, whether it starts or not
    wait_listening(port)
    return f"http://127.0.0.1:{port}"


KServePeers = dict[str, tuple[str, int | None]]


def kserve_side(tmp: Path, triton: TritonServer, stops: list[Stoppable]) -> tuple[KServePeers, list[str]]:
    """Triton, the shipped gateway (1 and 2 workers), Envoy, nginx and the floors."""
    peers: KServePeers = {"Triton (direct)": (triton.http_url, None)}
    grpc = f"127.0.0.1:{triton.config.grpc_port}"
    for workers in (1, 2):
        home = tmp / f"gateway{workers}"  # its own cache and state directories (the shipped file's relative ones)
        home.mkdir()
        extra = ["--workers", str(workers), "--log-level", "warning"]
        log = home / "gateway.log"
        gw = GatewayProcess(ROOT / "routes.yaml", triton.http_url, log, extra, cwd=home, triton_grpc=grpc)
        stops.append(gw)
        peers[f"gateway, shipped routes, {workers} worker{'s' if workers > 1 else ''}"] = (gw.url, gw.process.pid)
    proxies, procs, missing = shipped_path.start_proxies(tmp, triton.config.http_port)
    stops.extend(procs)
    peers.update(proxies)
    for name, app in FLOORS.items():
        url = start_floor(app, f"127.0.0.1:{triton.config.http_port}", tmp / f"{app.split(':')[1]}.log", stops)
        peers[name] = (url, _pid(stops[-1]))
    return peers, missing


def openai_side(tmp: Path, args: argparse.Namespace, stops: list[Stoppable]) -> tuple[list[Peer], Peer, list[str]]:
    """The stand-in, the gateway's `type: openai` tier, LiteLLM, Portkey and the floor."""
    home = tmp / "openai"
    home.mkdir()
    upstream = start_upstream(home)
    stops.extend(upstream.stop)
    everyone: list[Peer] = []
    try:
        missing = peers_openai.start_peers(home, upstream, args, everyone)
    finally:
        stops.extend(proc for peer in everyone for proc in peer.stop)
    host_port = upstream.url.removeprefix("http://").removesuffix("/v1")
    url = start_floor(FLOORS["floor: bare ASGI"], host_port, home / "relay.log", stops)
    floor = Peer("floor: bare ASGI relay", url + "/v1", _pid(stops[-1]))
    peers_openai.check(floor)
    everyone += [floor, Peer(upstream.name, upstream.url, upstream.pid)]
    return everyone, upstream, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500, help="KServe: per proxy, level and round")
    parser.add_argument("--per-round", type=int, default=1000, help="OpenAI: requests per proxy and round at c=1")
    parser.add_argument("--seconds", type=float, default=5.0, help="OpenAI: seconds per proxy and round at c=32")
    args = peers_openai.parse_with_peers(parser)
    levels = shipped_path.LEVELS
    tmp = Path(tempfile.mkdtemp(prefix="bench-every-peer-"))
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    stops: list[Stoppable] = []
    try:
        triton.wait_ready()
        kserve, missing = kserve_side(tmp, triton, stops)
        openai, upstream, left_out = openai_side(tmp, args, stops)
        time.sleep(2)  # the second gateway's workers finish starting
        k_results: dict[tuple[str, int], list[shipped_path.Sample]] = {(n, c): [] for n in kserve for c in levels}
        o_results: dict[tuple[str, int], list[peers_openai.Sample]] = {(p.name, c): [] for p in openai for c in levels}

        def one_round(reverse: bool, requests: int, per_round: int, seconds: float, keep: bool) -> None:
            for name in reversed(kserve) if reverse else kserve:
                url, pid = kserve[name]
                for c in levels:
                    sample = asyncio.run(shipped_path.load(url, pid, c, requests))
                    if keep:
                        k_results[(name, c)].append(sample)
            for peer in reversed(openai) if reverse else openai:
                for c in levels:
                    load = peers_openai.load(peer, upstream.pid or 0, c, per_round, seconds if c > 1 else 0.0)
                    made = peers_openai.run(load)
                    if keep:
                        o_results[(peer.name, c)].append(made)

        # a warm-up pass, not counted: first rounds ran slower
        one_round(False, min(args.requests, 300), min(args.per_round, 300), 1.0, keep=False)
        print("warm-up pass done", flush=True)
        for r in range(args.rounds):
            one_round(r % 2 == 1, args.requests, args.per_round, args.seconds, keep=True)
            print(f"round {r + 1} of {args.rounds} done", flush=True)
        print("\n## KServe path (shipped routes.yaml), CPU per request against Envoy\n")
        shipped_path.report(k_results, list(kserve))
        print("\n## OpenAI Images path, CPU per request against the gateway\n")
        peers_openai.report(o_results, [p.name for p in openai], levels)
        print(f"\n{args.rounds} rounds, alternated; KServe {args.requests} requests per proxy, level and round; "
              f"OpenAI {args.per_round} requests at c=1 and {args.seconds:g} s at c=32 per proxy and round; "
              f"{os.cpu_count()} cores shared by the upstreams, the proxies and the client. Logs: {tmp}")  # fmt: skip
        for line in [*missing, *left_out]:
            print(f"left out: {line}")
    finally:
        for proc in reversed(stops):
            try:
                halt(proc)
            except Exception as exc:  # noqa: BLE001 - the others are stopped all the same
                print(f"could not stop {proc}: {exc}", file=sys.stderr)
        triton.stop()


if __name__ == "__main__":
    main()
