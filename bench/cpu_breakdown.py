"""Where a KServe request's CPU goes inside the running gateway.

Starts a real Triton (`noop` only) and the gateway twice (`router serve`, as shipped:
metrics and access log on): once as it is, for its CPU per request from `/proc`, and
once with `bench/probe/sitecustomize.py` on its `PYTHONPATH`, which sums the event-loop
thread's CPU time inside each span below while the same KServe v2 binary `noop`
requests (what `tritonclient.http` sends) come from one client. Prints, per request,
each span's CPU with what it calls ("inclusive") and without the spans listed under it
("own"). The gap between the two runs' totals is the probe's own cost.

    .venv/bin/python bench/cpu_breakdown.py [--requests 3000] [--routes routes.yaml]

``--routes`` runs a routes file of your own instead of the one-route file of
`bench/overhead.py` — the shipped routes.yaml, say, whose inference goes to Triton over
gRPC (its relative cache and state directories land in the run's temporary directory).

The hardening issue's goal was the gateway's CPU per request at most 1.5x Envoy's
(`bench/peers.py`); this says which of the gateway's layers that CPU is spent in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from overhead import cpu_seconds, measure, write_routes  # noqa: E402

from image_router.triton import TritonServer  # noqa: E402
from tests.procs import GatewayProcess, serving  # noqa: E402

WARM = 200  # requests before the measured ones, besides the 50 measure() sends before each run

# (depth, label, target): each span nests in the nearest one above it with less depth;
# a target is patched where its callers look it up
SPANS = [
    (0, "ASGI app (below uvicorn's protocol)", "app"),
    (1, "the image lane: request id, one send wrapper", "image_router.http.lane:ImageLane.serve"),
    (2, "observer: span, metrics, access log", "image_router.http.observe:Observer.observed"),
    (3, "metrics and access log (Recorder.finish)", "image_router.telemetry.requests:Recorder.finish"),
    (3, "infer handler", "image_router.http.kserve_api:infer"),
    (4, "reading the body", "image_router.http.kserve_api:read_body"),
    (4, "decoding the KServe body (parse_infer)", "image_router.http.kserve_api:parse_infer"),
    (5, "reading the tensors (decode_request)", "image_router.http.kserve_api:decode_request"),
    (5, "the generation they ask for (image_request)", "image_router.http.kserve_api:image_request"),
    (4, "serve: tenant, canary, dispatch", "image_router.http.kserve_api:serve"),
    (5, "Dispatcher.serve: the walk, budget plan, cache", "image_router.dispatch.dispatcher:Dispatcher.serve"),
    (6, "Attempts.call: timeout, stats, slot release", "image_router.dispatch.attempt:Attempts.call"),
    (7, "TritonBackend._infer: replica, lane, circuits", "image_router.backends.triton:TritonBackend._infer"),
    (8, "TritonBackend._call_http: encode, decode", "image_router.backends.triton:TritonBackend._call_http"),
    (9, "encoding Triton's request (encode_request)", "image_router.backends.triton:encode_request"),
    (9, "the HTTP/1.1 round trip to Triton", "image_router.backends._http1:Http1Pool.request"),
    (9, "decoding Triton's answer (_result)", "image_router.backends.triton:_result"),
    (8, "TritonBackend._call_grpc: encode, decode", "image_router.backends.triton:TritonBackend._call_grpc"),
    (9, "building Triton's gRPC request (infer_message)", "image_router.backends.triton:infer_message"),
    (9, "the gRPC round trip to Triton", "image_router.backends._grpc:GrpcChannel.infer"),
    (9, "decoding Triton's gRPC answer (decode_image)", "image_router.backends.triton:decode_image"),
    (4, "encoding the answer (encode_response)", "image_router.http.kserve_api:encode_response"),
    (3, "sending the answer (Response.__call__)", "starlette.responses:Response.__call__"),
    (4, "uvicorn's send: headers, body", "uvicorn.protocols.http.httptools_impl:RequestResponseCycle.send"),
]


def own_times(inclusive: list[float]) -> list[float]:
    """Each span's time less its direct children's (the spans nested one level under it)."""
    own = list(inclusive)
    for i, (depth, _, _) in enumerate(SPANS):
        for j in range(i + 1, len(SPANS)):
            if SPANS[j][0] <= depth:
                break
            if SPANS[j][0] == depth + 1:
                own[i] -= inclusive[j]
    return own


def run(
    triton: TritonServer, tmp: Path, requests: int, probe: bool, routes: Path | None = None
) -> tuple[float, dict[str, list[float]]]:
    """CPU per request from /proc (seconds), and the probe's sums (empty without it)."""
    where = tmp / ("probed" if probe else "plain")
    where.mkdir()
    out = where / "probe.json"
    env = {}
    if probe:
        env = {
            "PYTHONPATH": str(ROOT / "bench" / "probe"),
            "ROUTER_PROBE_OUT": str(out),
            "ROUTER_PROBE_TARGETS": json.dumps([target for _, _, target in SPANS if target != "app"]),
            "ROUTER_PROBE_SKIP": str(WARM + 50 + 50),
            "ROUTER_PROBE_COUNT": str(requests),
        }
    grpc = f"127.0.0.1:{triton.config.grpc_port}"
    path = routes if routes is not None else write_routes(where)
    gateway = GatewayProcess(path, triton.http_url, where / "gateway.log", env=env, cwd=where, triton_grpc=grpc)
    try:
        asyncio.run(measure(gateway.url, 1, WARM))
        before = cpu_seconds(gateway.process.pid)
        asyncio.run(measure(gateway.url, 1, requests))
        cpu = (cpu_seconds(gateway.process.pid) - before) / (requests + 50)
    finally:
        gateway.stop()
    return cpu, (json.loads(out.read_text()) if probe else {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--routes", type=Path, default=None, help="a routes file (default: one route to noop)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-breakdown-"))
    with serving(ROOT / "model_repository", tmp / "triton.log", ["noop"]) as triton:
        plain, _ = run(triton, tmp, args.requests, probe=False, routes=args.routes)
        probed, sums = run(triton, tmp, args.requests, probe=True, routes=args.routes)
    calls = sums["app"][0]
    inclusive = [sums.get(target, [0, 0.0])[1] / calls * 1e6 for _, _, target in SPANS]
    own = own_times(inclusive)
    print(f"gateway CPU per request: {plain * 1e6:.0f} µs as shipped, {probed * 1e6:.0f} µs with the probe\n")
    print("| span | calls per request | inclusive | own |")
    print("|---|---|---|---|")
    for (depth, label, target), inc, mine in zip(SPANS, inclusive, own, strict=True):
        per = sums.get(target, [0, 0.0])[0] / calls
        print(f"| {'· ' * depth}{label} | {per:g} | {inc:.1f} µs | {mine:.1f} µs |")
    print(f"\n{calls} KServe `noop` requests at one client, after {WARM + 100} warm-up requests.")


if __name__ == "__main__":
    main()
