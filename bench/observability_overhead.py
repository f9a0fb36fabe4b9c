"""What observability costs in gateway CPU, measured robustly on a noisy machine.

One real Triton (noop) and one real gateway per configuration, side by side, then
rounds of ``--per-round`` requests (one client, KServe v2 binary, as
``tritonclient.http`` sends) alternating between them. Host noise hits every gateway
alike, so the ratio of their CPU per request (user + system, from /proc) is stable
where absolute figures are not. The configurations:

- ``off``: ``--no-metrics --no-access-log``, tracing off — the figure without them;
- ``default``: Prometheus metrics and the access log, as shipped;
- ``traced``: the default plus every request traced (``OTEL_TRACES_EXPORTER=otlp``,
  always-on sampler) and exported over OTLP/HTTP to a local sink;
- ``traced-<r>`` with ``--ratio r`` (repeatable): the same, ``parentbased_traceidratio``
  sampling at r.

    .venv/bin/python bench/observability_overhead.py [--rounds 8] [--per-round 500] [--ratio 0.1 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import _Sink, cpu_seconds, measure, write_routes  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

WARM_UP = 50  # requests measure() sends before the timed ones, counted in the CPU


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=500)
    parser.add_argument(
        "--ratio", type=float, action="append", default=[], help="also run a gateway sampling this ratio (repeatable)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-observability-"))
    routes = write_routes(tmp)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}"}
    arms: dict[str, tuple[list[str], dict[str, str]]] = {
        "off": (["--no-metrics", "--no-access-log"], {}),
        "default": ([], {}),
        "traced": ([], {**otlp, "OTEL_TRACES_SAMPLER": "always_on"}),
    }
    for ratio in args.ratio:
        sampled = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)}
        arms[f"traced-{ratio:g}"] = ([], {**otlp, **sampled})
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    gateways: dict[str, GatewayProcess] = {}
    try:
        for label, (extra, env) in arms.items():
            gateways[label] = GatewayProcess(routes, triton.http_url, tmp / f"{label}.log", extra=extra, env=env)
        cost: dict[str, list[float]] = {label: [] for label in arms}
        for _ in range(args.rounds):
            for label, gateway in gateways.items():
                before = cpu_seconds(gateway.process.pid)
                asyncio.run(measure(gateway.url, 1, args.per_round))
                cost[label].append((cpu_seconds(gateway.process.pid) - before) / (args.per_round + WARM_UP))
        print(f"gateway CPU per request, {args.rounds} interleaved rounds of {args.per_round} requests, one client\n")
        print("| configuration | median CPU/request | vs. off, per round | median vs. off |")
        print("|---|---|---|---|")
        for label, values in cost.items():
            ratios = [v / o for v, o in zip(values, cost["off"], strict=True)]
            print(
                f"| {label} | {statistics.median(values) * 1000:.3f} ms | "
                f"{', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios) - 1:+.0%} |"
            )
    finally:
        for gateway in gateways.values():
            gateway.stop()
        triton.stop()


if __name__ == "__main__":
    main()
