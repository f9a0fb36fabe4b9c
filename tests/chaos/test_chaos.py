"""The five chaos scenarios of the resilience issue, each asserting that every request
was answered correctly or refused with a clear status within its budget + a margin,
and that the gateway is healthy afterwards."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from image_router.policy.budget import OVERLOAD_REASONS
from image_router.triton import TritonServer
from tests.chaos.conftest import TALLIES, Tally, load, record, record_aio, signal_group
from tests.procs import GatewayProcess, scrape, serving
from tests.rollout_models import write_models

# alone: the scenarios hold latency and recovery bounds on a 2-core machine; beside
# another worker's inference a frozen replica was not back in time (make test runs them
# by themselves, after the rest)
pytestmark = [pytest.mark.chaos, pytest.mark.alone]

REPLICATED = """
backends:
  triton:
    urls: ["${REPLICA_A}", "${REPLICA_B}"]
    health_interval_ms: 250
    health_timeout_ms: 250
    retry: {attempts: 2, backoff_ms: 5, max_backoff_ms: 50}
    circuit: {consecutive_failures: 3, cooldown_ms: 1000}
models:
  draft: {backend: triton, latency_hint_ms: 150}
  noop: {backend: triton, latency_hint_ms: 20}
default_route: {name: main, model: draft, budget_ms: 1500, fallback: [noop]}
env: [REPLICA_A, REPLICA_B, GRPC_A, GRPC_B]
"""


def start(tmp_path: Path, routes: str, env: dict[str, str], triton_url: str = "") -> GatewayProcess:
    path = tmp_path / "routes.yaml"
    path.write_text(routes)
    return GatewayProcess(path, triton_url, tmp_path / "gateway.log", env=env)


def admin_state(gw: GatewayProcess) -> dict[str, object]:
    return httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10).json()  # type: ignore[no-any-return]


def replica(gw: GatewayProcess, url: str) -> dict[str, object]:
    backends = admin_state(gw)["backends"]
    assert isinstance(backends, dict)
    return next(r for r in backends["triton"] if r["url"] == url)


def healthy_afterwards(gw: GatewayProcess, body: dict[str, str] | None = None) -> None:
    assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
    r = httpx.post(gw.url + "/api/v1/generate", json=body or {"prompt": "after"}, timeout=10)
    assert r.status_code == 200


def test_killing_one_of_two_replicas_under_load(replicas: list[TritonServer], tmp_path: Path) -> None:
    a, b = replicas
    gw = start(tmp_path, REPLICATED, {"REPLICA_A": a.http_url, "REPLICA_B": b.http_url})
    tally = Tally("1. one of two replicas SIGKILLed under load", 1.5)
    TALLIES.append(tally)
    try:

        async def scenario() -> None:
            task = asyncio.create_task(load(gw.url, tally, {"prompt": "a cat"}, concurrency=6, duration_s=4))
            await asyncio.sleep(1.0)
            signal_group(a, signal.SIGKILL)
            await task

        asyncio.run(scenario())
        # six clients for 4 s, each request inside its 1.5 s budget: each started at least
        # 3 (at 0, by 1.5 and by 3 s), so the kill at 1 s landed mid-load. ("> 50" assumed a
        # speed: 47-52 were sent on a busy 2-core host.)
        assert tally.sent >= 6 * 3
        assert tally.errors == 0 and tally.refused == 0, tally.statuses
        assert tally.over_budget == 0, f"slowest {tally.worst_s:.3f}s"
        # the killed replica's requests are retried on the other one, not downgraded
        assert tally.downgraded <= 2 and tally.served_by.get("draft@1", 0) >= tally.answered - 2, tally.served_by
        assert replica(gw, a.http_url)["healthy"] is False
        assert replica(gw, b.http_url)["served"] > 0
        # ... and /metrics says so: the calls sent to the other replica (retried after the
        # kill, or hedged before it when a call on the loaded replica was overdue), and
        # which replica is out
        metrics = scrape(gw)
        resent = (
            ("router_retries_total", (("backend", "triton"),)),
            ("router_replica_hedges_total", (("backend", "triton"),)),
        )
        assert sum(metrics[key] for key in resent) > 0
        assert metrics[("router_replica_healthy", (("backend", "triton"), ("replica", a.http_url)))] == 0
        assert metrics[("router_replica_healthy", (("backend", "triton"), ("replica", b.http_url)))] == 1
        healthy_afterwards(gw)
    finally:
        gw.stop()


def test_a_frozen_replica_is_timed_out_taken_out_and_brought_back(replicas: list[TritonServer], tmp_path: Path) -> None:
    a, b = replicas
    gw = start(tmp_path, REPLICATED, {"REPLICA_A": a.http_url, "REPLICA_B": b.http_url})
    tally = Tally("2. a replica frozen (SIGSTOP), then resumed", 1.5)
    TALLIES.append(tally)
    try:

        async def scenario() -> dict[str, object]:
            task = asyncio.create_task(load(gw.url, tally, {"prompt": "a cat"}, concurrency=6, duration_s=7))
            await asyncio.sleep(1.0)
            # The server process only: freezing the Python-backend stubs too makes Triton
            # 2.51 abort on resume (a timed shared-memory lock expires during the freeze).
            os.kill(a.pid, signal.SIGSTOP)  # type: ignore[arg-type]
            await asyncio.sleep(2.5)
            frozen = await asyncio.to_thread(replica, gw, a.http_url)
            metrics = await asyncio.to_thread(scrape, gw)
            os.kill(a.pid, signal.SIGCONT)  # type: ignore[arg-type]
            await task
            return frozen, metrics

        frozen, metrics = asyncio.run(scenario())
        assert frozen["healthy"] is False and frozen["circuit"] == "open", frozen
        # /metrics shows the same while frozen: the replica's own circuit open, it out of service
        assert metrics[("router_circuit_open", (("backend", "triton"), ("model", ""), ("replica", a.http_url)))] == 1
        assert metrics[("router_circuit_open", (("backend", "triton"), ("model", ""), ("replica", b.http_url)))] == 0
        assert metrics[("router_replica_healthy", (("backend", "triton"), ("replica", a.http_url)))] == 0
        # the requests caught on the frozen replica were sent to the other one too once overdue
        assert metrics[("router_replica_hedges_total", (("backend", "triton"),))] >= 1
        assert tally.errors == 0 and tally.over_budget == 0, (tally.statuses, tally.worst_s)
        # Every request answered: one caught on the frozen replica is sent to the other
        # once overdue, or falls back to noop there. (This once allowed a few 504s: Triton
        # 2.51's batcher with priority levels stalled such fallbacks for 500 ms; the models
        # no longer use them. Before replica hedging, 2 runs in 5 on a busy host had a 504
        # or two: draft waited on the frozen replica until only noop's time was left.)
        assert tally.statuses == {200: tally.sent}, (tally.statuses, tally.refusals)
        # Only the requests caught on the frozen replica (one per client at most) fall
        # back to noop, plus a few; the healthy replica keeps serving draft to everyone
        # else. (Deciding on a model-wide p95 once downgraded 2,621 of 2,678 answers.)
        assert tally.downgraded <= 6 + 4, (tally.downgraded, tally.served_by)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = replica(gw, a.http_url)
            if state["healthy"] and state["circuit"] == "closed":
                break
            httpx.post(gw.url + "/api/v1/generate", json={"prompt": "probe"}, timeout=10)
            time.sleep(0.2)
        else:
            raise AssertionError(f"replica not back: {replica(gw, a.http_url)}")
        served_before = replica(gw, a.http_url)["served"]
        for _ in range(10):
            httpx.post(gw.url + "/api/v1/generate", json={"prompt": "again"}, timeout=10)
        assert replica(gw, a.http_url)["served"] > served_before  # type: ignore[operator]
        healthy_afterwards(gw)
    finally:
        gw.stop()


NOOP_ROUTES = 'backends: {triton: {url: "${TRITON_URL}"}}\ndefault_route: {model: noop, budget_ms: 2000}\n'

BURST = """
backends: {triton: {url: "${TRITON_URL}"}}
models:
  quality: {backend: triton, latency_hint_ms: 2500, max_concurrency: 1}
  preview: {backend: triton, latency_hint_ms: 500, max_concurrency: 2}
  draft: {backend: triton, latency_hint_ms: 100, max_concurrency: 2, max_queue: 8}
routes:
  - name: hq
    match: {intent: quality}
    model: quality
    budget_ms: 6000
    fallback: [preview, draft]
default_route: draft
"""
# The budget, 6 s, has room for two quality requests one after the other (2 x 2.5 s): only
# quality's admission gate (max_concurrency: 1), not the forecast, keeps a second one out.
#
# The three tiers of BURST as test models whose service time is a sleep of their hint.
# The shipped CPU tiers run at the machine's speed: on a busy 2-core machine quality took
# 5-8 s, the gateway rightly learnt that it did not fit the 4 s budget of the time
# (`quality:slow` on every answer), no request of the burst reached quality, and the
# scenario failed on "the burst reached quality's limit" (4 runs of 4, a 50 ms sampler
# seeing nothing because there was nothing to see). A sleep takes as long on any machine.
SLEEPING_TIERS = {"quality": {"delay_ms": "2500"}, "preview": {"delay_ms": "500"}, "draft": {"delay_ms": "100"}}


@pytest.fixture(scope="module")
def sleeping_tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("sleeping")
    with serving(write_models(root / "repository", SLEEPING_TIERS), root / "triton.log") as server:
        yield server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    done: float  # monotonic, when the answer was read

    @property
    def backend_s(self) -> float:
        """The ``backend`` span of Server-Timing: from the call to the tier to its answer."""
        timing = dict(part.strip().split(";dur=") for part in self.headers["server-timing"].split(","))
        return float(timing["backend"]) / 1000


def quality_bound_seen_in_answers(answers: list[Answer]) -> None:
    """What the users of one burst saw says quality's one slot was reached and held: some
    answers came from quality; every other 200 passed quality by for overload (its slot
    taken: ``busy``/``full``), never because it is too slow; and no two quality answers
    were being made at once (their backend spans, placed at the time each was read, do
    not overlap: a second request let in beside the first would share 2.5 s with it)."""
    ok = [a for a in answers if a.status == 200]
    quality = [a for a in ok if a.headers["x-router-model"].startswith("quality")]
    assert quality, f"no answer came from quality: {Counter(a.headers.get('x-router-fallback') for a in ok)}"
    for a in ok:
        if a not in quality:
            reasons = dict(part.split(":") for part in a.headers["x-router-fallback"].split(", "))
            assert reasons["quality"] in OVERLOAD_REASONS, a.headers
    spans = sorted((a.done - a.backend_s, a.done) for a in quality)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end - 0.2, f"two quality answers made at once: {spans}"


def test_a_burst_at_quality_is_served_downgraded_or_refused_in_time(
    sleeping_tiers: TritonServer, tmp_path: Path
) -> None:
    gw = start(tmp_path, BURST, {}, triton_url=sleeping_tiers.http_url)
    tally = Tally("3. burst of 300 concurrent requests at quality", 6.0)
    TALLIES.append(tally)

    async def burst() -> list[Answer]:
        connector = aiohttp.TCPConnector(limit=300)
        answers: list[Answer] = []
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            body: dict[str, object] = {"prompt": "a cathedral", "intent": "quality"}
            url = gw.url + "/api/v1/generate"

            async def one() -> None:
                got = await record_aio(session, tally, url, body)
                if got is not None:
                    answers.append(Answer(*got))

            await asyncio.gather(*(one() for _ in range(300)))
        return answers

    peaks: dict[str, dict[str, int]] = {}

    async def sample_admission(session: aiohttp.ClientSession, done: asyncio.Event) -> None:
        """The admin state and /metrics every 50 ms while a burst runs: the bounds must hold
        whenever sampled, and the gauges must say what the admin state says. (A sample can
        only miss a peak, never invent one: upper bounds only. That the limit was reached
        is read from the answers.)"""
        while not done.is_set():
            async with session.get(gw.url + "/admin/config", headers=gw.admin) as r:
                models = (await r.json())["models"]
            async with session.get(gw.url + "/metrics") as r:
                gauges = {
                    (s.name, s.labels["model"]): s.value
                    for family in text_string_to_metric_families(await r.text())
                    for s in family.samples
                    if s.name in ("router_model_inflight", "router_model_queued")
                }
            for name, m in models.items():
                peak = peaks.setdefault(name, {"inflight": 0, "queued": 0, "gauge_inflight": 0, "gauge_queued": 0})
                peak["inflight"] = max(peak["inflight"], m["inflight"])
                peak["queued"] = max(peak["queued"], m["queued"])
                peak["gauge_inflight"] = max(peak["gauge_inflight"], int(gauges[("router_model_inflight", name)]))
                peak["gauge_queued"] = max(peak["gauge_queued"], int(gauges[("router_model_queued", name)]))
            await asyncio.sleep(0.05)

    async def sampled_burst() -> list[Answer]:
        done = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            sampler = asyncio.create_task(sample_admission(session, done))
            answers = await burst()
            done.set()
            await sampler
        return answers

    async def open_connections() -> None:
        """Each tier asked directly, as many at once as its limit lets in: the gateway's
        connections to Triton are opened here, not in the middle of a burst. (Opened by
        the first burst on a starved CPU, a connect outlasted the 2 s connect timeout now
        and then, and three requests got 503 all_tiers_failed.)"""
        async with aiohttp.ClientSession() as session:

            async def one(model: str) -> int:
                async with session.post(gw.url + "/api/v1/generate", json={"prompt": "warm", "model": model}) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(m) for m in ("quality", "preview", "preview", "draft", "draft")))
        assert statuses == [200] * 5, statuses

    try:
        asyncio.run(open_connections())
        bursts = [asyncio.run(burst())]  # warms caches and pools
        before = rss_mb(gw.process.pid)
        bursts.append(asyncio.run(sampled_burst()))
        bursts.append(asyncio.run(burst()))
        after = rss_mb(gw.process.pid)
        limits = {"quality": (1, 0), "preview": (2, 0), "draft": (2, 8)}  # max_concurrency, max_queue in BURST
        for name, (inflight, queued) in limits.items():
            assert peaks[name]["inflight"] <= inflight and peaks[name]["queued"] <= queued, peaks
            assert peaks[name]["gauge_inflight"] <= inflight and peaks[name]["gauge_queued"] <= queued, peaks
        for answers in bursts:
            quality_bound_seen_in_answers(answers)
        assert tally.sent == 900 and tally.errors == 0
        assert set(tally.statuses) <= {200, 429, 504}, (tally.statuses, tally.refusals)
        print(f"burst statuses: {tally.statuses}; gateway memory {before:.1f} -> {after:.1f} MB")
        assert tally.statuses.get(429, 0) > 0, "a burst this size must meet admission control"
        assert tally.shed_without_retry_after == 0, "every 429 says when to come back"
        # Shed at once, not after waiting in a queue until the budget is nearly gone: timed
        # inside the gateway (its latency histogram), from when it read the request. The
        # client's clock adds the time 300 connections wait to be read, which on a starved
        # CPU (a parallel test run, stress-ng) reached 1.6-2.9 s for an instant refusal.
        refused = {
            (name.removeprefix("router_request_duration_seconds_"), labels.get("le")): value
            for (name, labels_tuple), value in scrape(gw).items()
            if name.startswith("router_request_duration_seconds_")
            and (labels := dict(labels_tuple)).get("outcome") == "refused"
        }
        assert refused["count", None] == tally.statuses[429], refused
        assert refused["bucket", "0.5"] == tally.statuses[429], f"a 429 took over 0.5 s in the gateway: {refused}"
        assert tally.over_budget == 0, f"slowest {tally.worst_s:.3f}s"
        # measured: 0.7-1.1 MB over two bursts after the warm-up one; 8 MB catches a leak of
        # ~13 KB per request (600 requests) with room for a noisy host
        assert after - before < 8, f"gateway memory grew {after - before:.1f} MB over two bursts"
        state = admin_state(gw)["models"]
        assert isinstance(state, dict)
        assert all(m["inflight"] == 0 and m["queued"] == 0 for m in state.values()), state
        healthy_afterwards(gw, {"prompt": "after", "intent": "quality"})
    finally:
        gw.stop()


def test_routes_replaced_by_a_broken_file_then_a_valid_one_under_load(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    routes = NOOP_ROUTES
    gw = start_gateway(routes)
    tally = Tally("4. routes.yaml broken, then valid, under load", 2.0)
    TALLIES.append(tally)

    async def scenario() -> None:
        task = asyncio.create_task(load(gw.url, tally, {"prompt": "x"}, concurrency=8, duration_s=3))
        await asyncio.sleep(0.5)
        gw.routes.write_text(routes.replace("budget_ms: 2000", "budget_ms: -1\n  nope: 1"))
        await asyncio.sleep(1.0)
        gw.routes.write_text(routes.replace("model: noop", "model: draft"))
        await task

    asyncio.run(scenario())
    assert tally.errors == 0 and tally.refused == 0 and tally.over_budget == 0, tally.statuses
    assert httpx.post(gw.url + "/api/v1/generate", json={"prompt": "x"}).headers["x-router-model"] == "draft@1"
    healthy_afterwards(gw)


MALFORMED: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("POST", "/api/v1/generate", b"{", {"content-type": "application/json"}, 400, "invalid_request"),
    ("POST", "/api/v1/generate", b'{"prompt": ["a"]}', {}, 400, "invalid_request"),
    ("POST", "/api/v1/generate", b'{"prompt": "x", "n": "two"}', {}, 400, "invalid_request"),
    ("POST", "/api/v1/generate", b'{"prompt": "' + b"x" * 5000 + b'"}', {}, 400, "invalid_request"),
    ("POST", "/api/v1/generate", b"\x00" * (2 << 20), {}, 413, "payload_too_large"),
    ("POST", "/api/v1/generate", b'{"prompt": "x", "model": "nope"}', {}, 404, "model_not_found"),
    ("POST", "/api/v1/generate", b"[" * 50_000 + b"]" * 50_000, {}, 400, "invalid_request"),
    ("POST", "/v1/images/generations", b'{"prompt": "x", "size": "1x1x1"}', {}, 400, "invalid_request"),
    ("POST", "/v1/images/generations", b"[]", {}, 400, "invalid_request"),
    ("POST", "/v2/models/noop/infer", b"\xff\xfe\x00binary garbage", {}, 400, "invalid_request"),
    ("POST", "/v2/models/noop/infer", b"{}" + b"\x00" * 64, {"inference-header-content-length": "2"}, 400,
     "invalid_request"),
    ("POST", "/v2/models/noop/infer", b"{}", {"inference-header-content-length": "-5"}, 400, "invalid_request"),
    (
        "POST",
        "/v2/models/noop/infer",
        json.dumps({"inputs": [{"name": "PROMPT", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(),
        {},
        400,
        "invalid_request",
    ),
    (
        "POST",
        "/v2/models/noop/infer",
        b'{"inputs": [{"name": "", "shape": [], "datatype": "", "parameters": [null, null], "data": []}]}',
        {},
        400,
        "invalid_request",
    ),
    ("POST", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", b"{}", {}, 404, "not_found"),  # no such endpoint
    # httpx resolves the dot segments: it lands on the admin API, which still wants the token
    ("GET", "/v2/models/../../admin/config", b"", {}, 401, "unauthorized"),
    ("POST", "/admin/reload", b"", {"authorization": "Bearer guess"}, 401, "unauthorized"),
    ("DELETE", "/api/v1/generate", b"", {}, 405, "method_not_allowed"),
]  # fmt: skip


def test_malformed_input_gets_4xx_with_a_code_and_the_gateway_keeps_serving(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gw = start_gateway(NOOP_ROUTES)
    tally = Tally(f"5. malformed input ({len(MALFORMED)} kinds)", 2.0)
    TALLIES.append(tally)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            for method, path, content, headers, status, code in MALFORMED:
                response = await record(client, tally, method, path, content=content, headers=headers)
                assert response is not None and response.status_code == status, (path, response and response.text)
                body = response.json()
                # /v2 answers in Triton's shape ({"error": message, "code": ...}), the rest in ours
                got = body["code"] if isinstance(body["error"], str) else body["error"]["code"]
                assert got == code, (path, body)
                assert "Traceback" not in response.text

    asyncio.run(scenario())
    assert tally.over_budget == 0 and tally.errors == 0
    healthy_afterwards(gw)


REDOS = """
backends: {triton: {url: "${TRITON_URL}"}}
routes:
  - name: words
    match: {prompt: "^(\\\\w+\\\\s?)*$"}
    model: noop
    budget_ms: 2000
default_route: {model: noop, budget_ms: 2000}
"""


def test_a_catastrophic_route_regex_cannot_freeze_the_gateway(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """The route regex that held Python's backtracking engine for 24 s on a 29-character
    prompt (`router validate` accepts it). Under RE2 the hostile prompts are matched in
    linear time: each is answered at once, and /healthz never waits."""
    gw = start_gateway(REDOS)
    tally = Tally("6. a catastrophic route regex and hostile prompts", 2.0)
    TALLIES.append(tally)
    prompts = ["a" * 28 + "!", "a " * 1999 + "!", "ab" * 1999 + "!"]

    async def scenario() -> list[float]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            hostile = [
                asyncio.create_task(record(client, tally, "POST", "/api/v1/generate", json={"prompt": p}))
                for p in prompts * 3
            ]
            health = []
            for _ in range(5):
                t0 = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                health.append(time.monotonic() - t0)
            await asyncio.gather(*hostile)
            matched = await client.post("/api/v1/generate", json={"prompt": "two words"})
            assert matched.headers["x-router-route"] == "words"
            return health

    health = asyncio.run(scenario())
    assert tally.answered == len(prompts) * 3 and tally.errors == 0, tally.statuses
    assert tally.worst_s < 1.0, f"a hostile prompt took {tally.worst_s:.3f}s"
    assert max(health) < 0.5, health


def test_a_replica_sigkilled_during_a_grpc_stream_the_stream_goes_on(
    replicas: list[TritonServer], tmp_path: Path
) -> None:
    """A tritonclient.grpc stream through the gateway's gRPC front door, the backend on
    gRPC too: one replica is SIGKILLed mid-stream, every request is still answered on
    the same stream, through the other."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    a, b = replicas
    routes = REPLICATED.replace(
        '    urls: ["${REPLICA_A}", "${REPLICA_B}"]\n',
        '    urls: ["${REPLICA_A}", "${REPLICA_B}"]\n    protocol: grpc\n    grpc_urls: ["${GRPC_A}", "${GRPC_B}"]\n',
    )
    env = {
        "REPLICA_A": a.http_url,
        "REPLICA_B": b.http_url,
        "GRPC_A": f"127.0.0.1:{a.config.grpc_port}",
        "GRPC_B": f"127.0.0.1:{b.config.grpc_port}",
    }
    gw = start(tmp_path, routes, env)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        sent = 0
        t0 = time.monotonic()
        killed = False
        while time.monotonic() - t0 < 3.0:
            if not killed and time.monotonic() - t0 > 1.0:
                signal_group(a, signal.SIGKILL)
                killed = True
            prompt = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
            prompt.set_data_from_numpy(np.array([[f"a cat {sent}".encode()]], dtype=object))
            client.async_stream_infer("auto", [prompt], request_id=str(sent))
            sent += 1
            time.sleep(0.05)
        ids, errors = set(), []
        for _ in range(sent):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                ids.add(result.get_response().id)  # type: ignore[attr-defined]
        client.stop_stream()
        assert sent > 40 and errors == [], errors[:3]
        assert ids == {str(i) for i in range(sent)}
        assert replica(gw, a.http_url)["healthy"] is False and replica(gw, b.http_url)["served"] > 0
        healthy_afterwards(gw)
    finally:
        client.close()
        gw.stop()
