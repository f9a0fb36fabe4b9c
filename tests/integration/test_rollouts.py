"""Canaries that promote and roll back themselves, as operators run them: a real Triton
serving test-only variants of one model (tests/rollout_models: a healthy one, one that
errs, one 2x slower, one that draws blank images), a real ``redis-server`` holding the
rollout's state and counters (the state store: ``noeviction``), and two gateway replicas
splitting the traffic; one test keeps the state in SQLite (one machine) instead.

Every test drives traffic through both replicas and watches their ``/admin/canary``:
the bad canaries are rolled back to 0 within 3 minutes (then no answer is a canary's),
the healthy one goes through every step to 100, both replicas serve the same weight and
each step is decided once; Redis killed mid-rollout pauses it (no promotion) and the
rollout goes on when Redis is back; a shadow stage never takes a slot a live request
was waiting for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from image_router.triton import TritonServer
from tests.procs import ADMIN_TOKEN, GatewayProcess, RedisProcess

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TICK_S = 0.3  # a tenth of the 3 s steps below


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis run as a state store must be: ``noeviction`` (the conftest's is a cache)."""
    server = RedisProcess(tmp_path, policy="noeviction").start()
    yield server
    server.stop()


@pytest.fixture()
def replicas(variants: TritonServer, tmp_path: Path) -> Iterator[Callable[..., list[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    def start(text: str, count: int = 2) -> list[GatewayProcess]:
        routes = tmp_path / "routes.yaml"
        routes.write_text(text)
        group = [
            GatewayProcess(routes, variants.http_url, tmp_path / f"gateway{len(started) + i}.log", ["--no-grpc"])
            for i in range(count)
        ]
        started.extend(group)
        return group

    yield start
    for gateway in started:
        gateway.stop()


def routes(redis_url: str, canary: str, rollout: str, canary_spec: str = "", extra_routes: str = "") -> str:
    return f"""
backends:
  variants: {{type: triton, url: "${{TRITON_URL}}"}}
models:
  base: {{backend: variants, latency_hint_ms: 60}}
  {canary}: {{backend: variants, latency_hint_ms: 60{canary_spec}}}
state: {{store: "{redis_url}"}}
routes:
  - name: pictures
    match: "prompt:picture"
    sticky: header:X-User-Id
    budget_ms: 10000
    fallback: [base]
    split:
      - {{model: base, weight: 100}}
      - model: {canary}
        canary: true
        rollout: {rollout}
{extra_routes}
default_route: {{name: default, model: base, budget_ms: 10000}}
env: [HOOK_SECRET]
"""


ROLLOUT = "{steps: [20, 50, 100], interval_s: 3, analysis: {min_samples: 20, max_p95_ratio: 1.5}}"


class Load:
    """Clients sending ``pictures`` requests to every replica in turn until stopped;
    each answer is kept: (replica, user, status, canary?, model, when it was sent)."""

    def __init__(self, gateways: list[GatewayProcess], clients: int = 6, prompt: str = "a picture") -> None:
        self.gateways = gateways
        self.clients = clients
        self.prompt = prompt
        self.answers: list[tuple[int, str, int, bool, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, n: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                replica = (n + i) % len(self.gateways)
                user = f"user-{(n * 7919 + i) % 40}"
                body = {"prompt": self.prompt, "seed": i, "width": 64, "height": 64}
                sent = time.monotonic()
                try:
                    r = await client.post(self.gateways[replica].url + "/api/v1/generate", json=body,
                                          headers={"X-User-Id": user})  # fmt: skip
                except httpx.HTTPError:
                    continue
                self.answers.append((replica, user, r.status_code, r.headers.get("x-router-canary") == "true",
                                     r.headers.get("x-router-model", "").split("@")[0], sent))  # fmt: skip

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def rollout_of(gateway: GatewayProcess) -> dict[str, Any]:
    r = httpx.get(gateway.url + "/admin/canary/pictures", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def watch(gateways: list[GatewayProcess], until: Callable[[list[dict[str, Any]]], bool], timeout_s: float,
          every_s: float = 0.1) -> list[tuple[float, list[dict[str, Any]]]]:  # fmt: skip
    """Poll every replica's rollout until ``until`` holds; every poll is returned."""
    polls: list[tuple[float, list[dict[str, Any]]]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = [rollout_of(g) for g in gateways]
        polls.append((time.monotonic(), seen))
        if until(seen):
            return polls
        time.sleep(every_s)
    raise AssertionError(f"not reached in {timeout_s} s; last: {[(s['status'], s['weight']) for s in polls[-1][1]]}")


def assert_same_weight(polls: list[tuple[float, list[dict[str, Any]]]], within_s: float = 0.25) -> None:
    """Both replicas serve the same weight: a change takes effect on both at one wall
    time, so they differ only when it falls between the two reads of one poll."""
    since: float | None = None
    for at, (a, b) in polls:
        if a["weight"] == b["weight"]:
            since = None
            continue
        since = at if since is None else since
        assert at - since <= within_s, f"replicas disagreed for {at - since:.1f} s: {a['weight']} vs {b['weight']}"


def assert_decided_once(gateways: list[GatewayProcess]) -> list[dict[str, Any]]:
    states = [rollout_of(g) for g in gateways]
    decisions = states[0]["decisions"]
    assert decisions == states[1]["decisions"], "both replicas read one decision log"
    made: dict[str, int] = {}
    for s in states:
        for action, n in s["decided_here"].items():
            made[action] = made.get(action, 0) + n
    logged: dict[str, int] = {}
    for d in decisions:
        logged[d["action"]] = logged.get(d["action"], 0) + 1
    assert made == logged, f"decisions made by the replicas {made} != the log {logged}"
    steps = [d["step"] for d in decisions if d["action"] == "advance"]
    assert len(steps) == len(set(steps)), f"a step was decided twice: {steps}"
    return decisions  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("canary", "why"),
    [("errors", "error_rate"), ("slow", "p95_ratio"), ("blank", "degenerate_rate")],
)
def test_a_bad_canary_is_rolled_back_within_3_minutes(
    replicas: Callable[..., list[GatewayProcess]], redis: RedisProcess, canary: str, why: str
) -> None:
    gateways = replicas(routes(redis.url, canary, ROLLOUT))
    with Load(gateways):
        polls = watch(gateways, lambda s: all(r["status"] == "rolled_back" and r["weight"] == 0 for r in s), 180)
    state = rollout_of(gateways[0])
    back = state["decisions"][-1]
    assert back["action"] == "rollback" and back["by"] == "analysis"
    assert back["at"] - state["started"] < 180
    assert why in back["reason"], back["reason"]
    failed = [c for c in back["checks"] if c["failed"]]
    assert failed and back["samples"]["canary"] >= 20, "the decision records the numbers it was made on"
    assert_same_weight(polls)
    assert_decided_once(gateways)
    # afterwards nobody is served by the canary, on either replica
    with Load(gateways) as load:
        time.sleep(2)
    assert len(load.answers) > 20 and not any(a[3] for a in load.answers)
    assert {a[4] for a in load.answers} == {"base"}
    assert all(status == 200 for _, _, status, *_ in load.answers)


HOOK_SECRET = "a-webhook-secret-for-tests"


class Webhook(BaseHTTPRequestHandler):
    """Keeps every POST whose signature is right."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(self.headers.get("x-router-signature-256", ""), expected):
            Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_a_healthy_canary_is_promoted_through_every_step(
    replicas: Callable[..., list[GatewayProcess]], redis: RedisProcess
) -> None:
    Webhook.received = []
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/rollouts"
    secret = f"${{HOOK_SECRET:-{HOOK_SECRET}}}"  # from the environment, as a Secret would give it
    rollout = ROLLOUT.replace("}}", f"}}, webhook: '{hook}', webhook_secret: '{secret}'}}")
    gateways = replicas(routes(redis.url, "good", rollout))
    try:
        with Load(gateways) as load:
            polls = watch(gateways, lambda s: all(r["status"] == "promoted" for r in s), 120)
            time.sleep(1.0)
    finally:
        server.shutdown()
        server.server_close()
    seen = [w for _, (a, _) in polls for w in [a["weight"]]]
    assert [w for i, w in enumerate(seen) if i == 0 or w != seen[i - 1]] == [20, 50, 100], "every step, in order"
    assert_same_weight(polls)
    decisions = assert_decided_once(gateways)
    assert [d["action"] for d in decisions] == ["start", "advance", "advance", "promote"]
    for d in decisions[1:]:
        assert d["samples"]["canary"] >= 20 and d["samples"]["baseline"] >= 20 and d["checks"]
    # sticky cohorts only ever move to the canary while the weight rises, across both
    # replicas (they switch at the same moment), in the order the requests were sent
    on_canary: set[str] = set()
    for r, user, status, canary, _, _ in sorted(load.answers, key=lambda a: a[5]):
        if status != 200:
            continue
        assert canary or user not in on_canary, f"{user} moved back from the canary (replica {r})"
        if canary:
            on_canary.add(user)
    assert any(a[3] for a in load.answers) and all(a[2] == 200 for a in load.answers)
    hooks = [(h["action"], h["weight"]) for h in Webhook.received]
    assert sorted(hooks) == sorted((d["action"], d["weight"]) for d in decisions), "one signed POST per decision"
    assert all(h["route"] == "pictures" and h["canary_model"] == "good" for h in Webhook.received)
    metrics = httpx.get(gateways[0].url + "/metrics").text
    assert 'router_rollout_weight{model="good",route="pictures"} 100.0' in metrics


def test_redis_killed_pauses_the_rollout_and_it_goes_on_when_back(
    replicas: Callable[..., list[GatewayProcess]], redis: RedisProcess
) -> None:
    text = routes(redis.url, "good", ROLLOUT.replace("interval_s: 3", "interval_s: 2"))
    gateways = replicas(text)
    with Load(gateways):
        watch(gateways, lambda s: all(r["weight"] == 50 for r in s), 60)
        redis.kill()
        polls = watch(gateways, lambda s: all(r["paused_by_store"] for r in s), 10)
        time.sleep(8.0)  # four intervals: a healthy canary would have been promoted by now
        paused = [rollout_of(g) for g in gateways]
        assert all(r["weight"] == 50 and r["status"] == "running" and r["paused_by_store"] for r in paused), paused
        metrics = httpx.get(gateways[0].url + "/metrics").text
        assert 'router_rollout_store_paused{route="pictures"} 1.0' in metrics
        redis.start()  # an empty Redis on the same port: the replicas put the state back
        polls += watch(gateways, lambda s: all(r["status"] == "promoted" for r in s), 60)
    assert_same_weight([p for p in polls if not any(r["paused_by_store"] for r in p[1])])
    decisions = rollout_of(gateways[0])["decisions"]
    assert [d["action"] for d in decisions] == ["start", "advance", "advance", "promote"]
    # a restarted gateway resumes where the rollout is: promoted, all traffic to the canary
    gateways[1].stop()
    (again,) = replicas(text, 1)
    watch([again], lambda s: s[0]["status"] == "promoted" and s[0]["weight"] == 100, 10)
    body = {"prompt": "a picture", "seed": 1, "width": 64, "height": 64}
    r = httpx.post(again.url + "/api/v1/generate", json=body, headers={"X-User-Id": "someone"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-router-canary"] == "true"


def test_operators_pause_resume_and_abort_from_the_command_line(
    replicas: Callable[..., list[GatewayProcess]], redis: RedisProcess
) -> None:
    gateways = replicas(routes(redis.url, "good", ROLLOUT))
    watch(gateways, lambda s: all(r["weight"] == 20 for r in s), 10)

    def canary(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"ROUTER_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "image_router.cli", "canary", *args, "--url", gateways[0].url],
                              capture_output=True, text=True, env=env, timeout=30)  # fmt: skip

    explained = httpx.post(gateways[1].url + "/admin/explain", json={"prompt": "a picture"}, headers=ADMIN).json()
    assert [(c["model"], c["weight"], c["rollout"]) for c in explained["candidates"]] == [
        ("base", 80.0, False),
        ("good", 20.0, True),
    ], "explain shows the live weights"
    paused = canary("pause", "pictures")
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    with Load(gateways):
        time.sleep(5)  # past the step's interval: a paused rollout does not advance
    assert all(r["status"] == "paused" and r["weight"] == 20 for r in [rollout_of(g) for g in gateways])
    again = canary("pause", "pictures")
    assert again.returncode != 0 and "409" in again.stderr and "cannot pause" in again.stderr
    assert canary("resume", "pictures").returncode == 0
    aborted = canary("abort", "pictures")
    assert aborted.returncode == 0 and "rolled_back" in aborted.stdout
    watch(gateways, lambda s: all(r["weight"] == 0 for r in s), 5)
    status = canary("status")
    assert status.returncode == 0 and "pictures: good at 0% (rolled_back" in status.stdout
    assert "last: abort by operator" in status.stdout
    full = json.loads(canary("status", "pictures", "--json").stdout)
    assert [d["by"] for d in full["decisions"]] == ["controller", "operator", "operator", "operator"]
    # editing the rollout in routes.yaml starts it over (both replicas, hot-reloaded)
    routes_file = gateways[0].routes
    routes_file.write_text(routes_file.read_text().replace("interval_s: 3", "interval_s: 4"))
    restarted = watch(gateways, lambda s: all(r["status"] == "running" and r["weight"] == 20 for r in s), 15)[-1][1]
    assert [d["action"] for d in restarted[0]["decisions"]] == ["start"]
    assert restarted[0]["digest"] != full["digest"]
    assert httpx.post(gateways[1].url + "/admin/canary/pictures/jump", headers=ADMIN).status_code == 400
    assert httpx.post(gateways[1].url + "/admin/canary/pictures/abort").status_code == 401
    assert httpx.post(gateways[1].url + "/admin/canary/nothing/abort", headers=ADMIN).status_code == 404


def test_with_sqlite_a_restarted_gateway_resumes_the_rollout_at_its_step(
    replicas: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    """One machine, no Redis: the rollout's state in a SQLite file. A gateway stopped at
    the second step and started again serves that step's weight from its first read, and
    its decision log is the one it left (not a new start)."""
    text = routes(f"sqlite://{tmp_path / 'state' / 'rollouts.db'}", "good", ROLLOUT)
    (first,) = replicas(text, 1)
    with Load([first]):
        watch([first], lambda s: s[0]["weight"] == 50, 60)
    before = rollout_of(first)
    first.stop()
    (again,) = replicas(text, 1)
    (after,) = watch([again], lambda s: s[0]["weight"] > 0, 10)[-1][1]
    assert after["weight"] == before["weight"] == 50 and after["status"] == "running"
    assert after["decisions"] == before["decisions"], "the rollout it left, not a new one"
    assert [d["action"] for d in after["decisions"]] == ["start", "advance"]


def test_shadow_requests_never_take_a_slot_a_live_request_was_waiting_for(
    replicas: Callable[..., list[GatewayProcess]], redis: RedisProcess
) -> None:
    """The canary model also serves a live route (``direct``) with one slot: while that
    route keeps its slot busy and requests waiting, no shadow request is sent; once it
    is quiet, shadows run, and their images are paired with the baseline's."""
    shadow = "{shadow: {fraction: 1.0, duration_s: 600}, steps: [50], interval_s: 600}"
    one_slot = ", triton_model: good, max_concurrency: 1, max_queue: 16"
    direct = "  - {name: direct, match: 'prompt:direct', model: good_one, budget_ms: 30000}\n"
    gateways = replicas(routes(redis.url, "good_one", shadow, one_slot, direct), 1)
    gateway = gateways[0]
    watch(gateways, lambda s: s[0]["status"] == "shadow", 10)
    with Load(gateways, clients=4, prompt="direct") as busy:
        time.sleep(1.0)
        with Load(gateways, clients=2) as live:
            time.sleep(4.0)
        during = rollout_of(gateway)["shadow"]
    assert len(busy.answers) > 10 and len(live.answers) > 10
    assert during["mirrored"] == 0 and during["skipped_busy"] > 10, during
    with Load(gateways, clients=2) as quiet:
        time.sleep(3.0)
    state = rollout_of(gateway)
    assert state["shadow"]["mirrored"] > 5, state["shadow"]
    assert state["weight"] == 0 and state["status"] == "shadow"
    assert not any(a[3] for a in live.answers + quiet.answers), "users never see a shadow's result"
    assert {a[4] for a in live.answers + quiet.answers} == {"base"}
    pairs = [g for g in state["gallery"] if g["side"] == "pair"]
    assert pairs and pairs[0]["image"].startswith("data:image/jpeg;base64,") and 0 < pairs[0]["difference"] < 0.2
    assert state["analysis"] is not None and state["analysis"]["samples"]["canary"] > 5
