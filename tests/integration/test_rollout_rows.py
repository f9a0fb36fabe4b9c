"""The rollout promises of docs/rollouts.md that the first rollout tests left open, with
real processes: a Triton serving sleep-timed variants of the test model
(tests/rollout_models), a real ``redis-server`` as the state store, ``router serve`` in
a subprocess, ``router canary`` as an operator runs it, and a webhook receiver on an
ephemeral port.

- a canary too slow for its route's budget is passed on to the next tier; those
  answers are *downgrades*, and the downgrade rate alone rolls it back;
- without the store an action is ``503 store_unavailable`` and ``router canary
  status`` says ``PAUSED: shared store unavailable``;
- ``router canary promote`` and ``POST /admin/canary/{route}/promote`` take a rollout
  to 100 % (``promoted``);
- the webhook is tried three times with backoff, each try bounded at 5 s; rotating
  ``webhook_secret`` in routes.yaml signs the next decision with the new secret and
  does not restart the rollout;
- at most 4 shadow requests are in flight at once, however many live answers come at once;
- a shadow stage moves to the first step once ``duration_s`` is over and the shadow
  results pass, and a reload that changes nothing in the rollout leaves it running.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from image_router.rollouts.webhook import verify
from image_router.triton import TritonServer
from tests.procs import ADMIN_TOKEN, GatewayProcess, RedisProcess, scrape

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture()
def gateway(variants: TritonServer, tmp_path: Path) -> Iterator[Callable[[str], GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(text: str) -> GatewayProcess:
        routes = tmp_path / "routes.yaml"
        routes.write_text(text)
        gw = GatewayProcess(routes, variants.http_url, tmp_path / f"gateway{len(started)}.log", ["--no-grpc"])
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def routes(store: str, canary: str, rollout: str, *, budget_ms: int = 10000, base: str = "base") -> str:
    """One split route, ``pictures``: ``base`` (Triton's ``base`` model) and ``canary``
    (with ``rollout``). The shadow tests' canaries are on a backend of their own (the
    same Triton): background work waits for its whole backend to be idle."""
    return f"""
backends:
  variants: {{type: triton, url: "${{TRITON_URL}}"}}
  canaries: {{type: triton, url: "${{TRITON_URL}}"}}
models:
  base: {{backend: variants, triton_model: {base}, latency_hint_ms: 40}}
  good: {{backend: variants, latency_hint_ms: 40}}
  sluggish: {{backend: variants, latency_hint_ms: 2000}}
  mirrored: {{backend: canaries, triton_model: good, latency_hint_ms: 40}}
  shadowed: {{backend: canaries, triton_model: wide, latency_hint_ms: 400}}
state: {{store: "{store}"}}
routes:
  - name: pictures
    match: "prompt:picture"
    budget_ms: {budget_ms}
    fallback: [base]
    split:
      - {{model: base, weight: 100}}
      - model: {canary}
        weight: 5
        canary: true
        rollout: {rollout}
default_route: {{name: default, model: base, budget_ms: 10000}}
env: [ROLLOUT_HOOK_SECRET]
"""


def rollout_of(gw: GatewayProcess, route: str = "pictures") -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/admin/canary/{route}", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_for(gw: GatewayProcess, until: Callable[[dict[str, Any]], bool], timeout_s: float,
             route: str = "pictures") -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        state = rollout_of(gw, route)
        if until(state):
            return state
        if time.monotonic() > deadline:
            actions = [d["action"] for d in state["decisions"]]
            where = f"{state['status']} at {state['weight']}, {actions}, analysis {state['analysis']}"
            raise AssertionError(f"not reached in {timeout_s} s: {where}")
        time.sleep(0.1)


def canary_cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"ROUTER_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, "-m", "image_router.cli", "canary", *args, "--url", gw.url],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


def reload_with(gw: GatewayProcess, text: str) -> None:
    """Write routes.yaml and reload it (the file watcher may get there first: either
    way the new table is serving when this returns)."""
    before = httpx.get(gw.url + "/admin/config", headers=ADMIN, timeout=10).json()["table"]["digest"]
    gw.routes.write_text(text)
    r = httpx.post(gw.url + "/admin/reload", headers=ADMIN, timeout=10)
    assert r.status_code == 200 and r.json()["ok"], r.text
    after = httpx.get(gw.url + "/admin/config", headers=ADMIN, timeout=10).json()["table"]["digest"]
    assert after != before, "the edited routes.yaml is serving"


class Traffic:
    """``clients`` threads sending seeded ``prompt`` requests until stopped; every
    answer's status and headers are kept."""

    def __init__(self, gw: GatewayProcess, clients: int = 3, prompt: str = "a picture") -> None:
        self.url, self.prompt = gw.url + "/api/v1/generate", prompt
        self.answers: list[tuple[int, httpx.Headers]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def _client(self, n: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = {"prompt": self.prompt, "seed": n * 100000 + i, "width": 64, "height": 64}
                try:
                    r = client.post(self.url, json=body)
                except httpx.HTTPError:
                    continue
                self.answers.append((r.status_code, r.headers))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


# -- 1. a real downgrade ----------------------------------------------------------------


def test_a_canary_too_slow_for_the_budget_is_rolled_back_on_its_downgrade_rate(
    gateway: Callable[[str], GatewayProcess], state_redis: RedisProcess
) -> None:
    """The canary's service time (2 s) does not fit the route's 1 s budget, so every
    request sent to it is passed on to ``base`` (``X-Router-Fallback: sluggish:slow``).
    Each is a downgrade, not an error: the rollout rolls back on ``downgrade_rate``
    alone, and the decision, the status and the metrics carry the numbers."""
    analysis = "{min_samples: 10, max_downgrade_rate_increase: 0.05}"
    rollout = f"{{steps: [50, 100], interval_s: 5, analysis: {analysis}}}"  # fails long before 5 s
    gw = gateway(routes(state_redis.url, "sluggish", rollout, budget_ms=1000))
    wait_for(gw, lambda s: s["weight"] == 50, 10)
    with Traffic(gw) as traffic:
        state = wait_for(gw, lambda s: s["status"] == "rolled_back", 30)
    assert state["weight"] == 0 or state["next_weight"] == 0
    back = state["decisions"][-1]
    assert (back["action"], back["by"]) == ("rollback", "analysis")
    assert [c["name"] for c in back["checks"] if c["failed"]] == ["downgrade_rate"], back["checks"]
    assert "downgrade_rate" in back["reason"]
    check = next(c for c in back["checks"] if c["name"] == "downgrade_rate")
    assert check["canary"] == 1.0 and check["baseline"] == 0.0 and check["threshold"] == 0.05
    canary, baseline = back["arms"]["canary"], back["arms"]["baseline"]
    assert canary["requests"] >= 10 and canary["downgrades"] == canary["requests"] and canary["errors"] == 0
    assert baseline["requests"] >= 10 and baseline["downgrades"] == 0 and baseline["errors"] == 0
    # what the clients saw: every answer 200, the canary's passed on with the reason
    statuses = {status for status, _ in traffic.answers}
    passed_on = [h for _, h in traffic.answers if h.get("x-router-fallback") == "sluggish:slow"]
    assert statuses == {200} and len(passed_on) >= canary["requests"], (statuses, len(passed_on))
    assert all(h["x-router-model"].split("@")[0] == "base" for _, h in traffic.answers)
    metrics = scrape(gw)
    assert metrics[("router_rollout_decisions_total", (("action", "rollback"), ("route", "pictures")))] == 1.0
    assert metrics[("router_rollout_status", (("route", "pictures"), ("status", "rolled_back")))] == 1.0


# -- 2. without the store ------------------------------------------------------------------


def test_without_the_store_actions_are_503_and_the_cli_says_paused(
    gateway: Callable[[str], GatewayProcess], state_redis: RedisProcess
) -> None:
    """The state store hangs (SIGSTOP): an operator's action cannot be recorded, so it
    is ``503 store_unavailable`` (within the store call's bound), from the API and the
    CLI; ``router canary status`` says ``PAUSED: shared store unavailable``. Once the
    store answers again the same action goes through."""
    gw = gateway(routes(state_redis.url, "good", "{steps: [50, 100], interval_s: 3}"))  # no traffic: no step
    wait_for(gw, lambda s: s["weight"] == 50, 10)
    assert state_redis.process is not None
    os.kill(state_redis.process.pid, signal.SIGSTOP)
    try:
        wait_for(gw, lambda s: s["paused_by_store"], 10)
        t0 = time.monotonic()
        r = httpx.post(gw.url + "/admin/canary/pictures/pause", headers=ADMIN, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
        assert time.monotonic() - t0 < 5, "bounded by the store call, not Redis's own timeout"
        paused = canary_cli(gw, "pause", "pictures")
        assert paused.returncode != 0 and "error: 503" in paused.stderr, (paused.stdout, paused.stderr)
        status = canary_cli(gw, "status")
        assert status.returncode == 0, status.stderr
        line = "pictures: good at 50% (running, step 1/2) vs base  PAUSED: shared store unavailable"
        assert line in status.stdout, status.stdout
    finally:
        os.kill(state_redis.process.pid, signal.SIGCONT)
    wait_for(gw, lambda s: not s["paused_by_store"], 10)
    assert "PAUSED" not in canary_cli(gw, "status").stdout
    r = httpx.post(gw.url + "/admin/canary/pictures/pause", headers=ADMIN, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "paused", r.text


# -- 3. promote ------------------------------------------------------------------------------


def test_promote_from_the_cli_and_the_api_takes_the_canary_to_100(
    gateway: Callable[[str], GatewayProcess], state_redis: RedisProcess
) -> None:
    """Two rollouts held at 20 % (their analysis would need far more samples): one is
    promoted with ``router canary promote``, the other paused and then promoted through
    the API. Both go to 100 % (``promoted``, an operator's decision), every answer of
    both routes is then the canary's, and promoting again is a 409."""
    rollout = "{steps: [20, 50], interval_s: 3, analysis: {min_samples: 100000}}"
    photos = (
        '  - name: photos\n    match: "prompt:photo"\n    split:\n      - {model: base, weight: 100}\n'
        "      - {model: good, weight: 1, canary: true, rollout: " + rollout + "}\n"
    )
    text = routes(state_redis.url, "good", rollout).replace("default_route:", photos + "default_route:")
    gw = gateway(text)
    for route in ("pictures", "photos"):
        wait_for(gw, lambda s: s["weight"] == 20 and s["status"] == "running", 10, route)

    promoted = canary_cli(gw, "promote", "pictures")
    assert promoted.returncode == 0, promoted.stderr
    assert "pictures: good at " in promoted.stdout and "(promoted, step 1/2)" in promoted.stdout, promoted.stdout
    r = httpx.post(gw.url + "/admin/canary/photos/pause", headers=ADMIN, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    r = httpx.post(gw.url + "/admin/canary/photos/promote", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["next_weight"]) == ("promoted", 100.0)

    for route in ("pictures", "photos"):
        state = wait_for(gw, lambda s: s["weight"] == 100, 10, route)
        assert state["status"] == "promoted"
        last = state["decisions"][-1]
        assert (last["action"], last["by"], last["from_weight"], last["weight"]) == ("promote", "operator", 20, 100)
        for seed in range(5):
            body = {"prompt": f"a {route[:-1]}", "seed": seed, "width": 64, "height": 64}
            answer = httpx.post(gw.url + "/api/v1/generate", json=body, timeout=30)
            assert answer.status_code == 200 and answer.headers["x-router-canary"] == "true", answer.headers
            assert answer.headers["x-router-model"].split("@")[0] == "good"
    again = canary_cli(gw, "promote", "pictures")
    assert again.returncode != 0 and "409" in again.stderr and "cannot promote" in again.stderr
    assert httpx.post(gw.url + "/admin/canary/photos/promote", headers=ADMIN, timeout=10).status_code == 409


# -- 4. the webhook ------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on an ephemeral port: each POST is kept (arrival time,
    headers, body) and answered with the next of ``answers`` (then 200); ``"drip"``
    answers 200 but sends its 40-byte body a byte every 0.5 s: no read ever waits
    long, but the whole answer takes 20 s."""

    def __init__(self, answers: list[int | str]) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[float, dict[str, str], bytes]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                answer = receiver.answers.pop(0) if receiver.answers else 200
                with contextlib.suppress(OSError):
                    if answer == "drip":  # 200 and headers at once, then a byte every 0.5 s
                        self.send_response(200)
                        self.send_header("content-length", "40")
                        self.end_headers()
                        while not receiver.release.wait(0.5) and self.wfile.write(b" "):
                            self.wfile.flush()
                        return
                    self.send_response(int(answer))
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rollouts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float) -> list[tuple[float, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout_s
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} of {count} POSTs in {timeout_s} s"
            time.sleep(0.05)
        return list(self.posts)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    legacy = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-router-signature-256", ""), legacy) and verify(secret, headers, body)


def test_the_webhook_is_retried_with_backoff_bounded_per_try_and_a_rotated_secret_keeps_the_rollout(
    gateway: Callable[[str], GatewayProcess], state_redis: RedisProcess
) -> None:
    """The ``start`` decision meets a receiver that answers 500 twice, then 200: it gets
    the same signed event three times, 0.5 s then 1 s apart (backoff). The secret is
    then rotated in routes.yaml: the rollout goes on (same digest, its ``start`` kept),
    and the operator's ``pause`` is signed with the new secret only. That POST's first
    try trickles its answer over 20 s: the second try comes once the first's 5 s are up."""
    receiver = Receiver([500, 500, 200, "drip", 200])
    try:
        secret = "${ROLLOUT_HOOK_SECRET:-secret-one}"
        rollout = f"{{steps: [50, 100], interval_s: 600, webhook: '{receiver.url}', webhook_secret: '{secret}'}}"
        text = routes(state_redis.url, "good", rollout)
        gw = gateway(text)
        posts = receiver.wait(3, 15)
        (t1, h1, b1), (t2, h2, b2), (t3, h3, b3) = posts[:3]
        assert b1 == b2 == b3 and json.loads(b1)["action"] == "start"
        assert h1["webhook-id"] == h2["webhook-id"] == h3["webhook-id"], "one event, tried three times"
        assert all(signed_by("secret-one", h, b) for _, h, b in posts[:3])
        assert t2 - t1 >= 0.49 and t3 - t2 >= 0.98, f"backoff: {t2 - t1:.2f} s, then {t3 - t2:.2f} s"
        before = rollout_of(gw)

        reload_with(gw, text.replace("secret-one", "secret-two"))
        after = rollout_of(gw)
        assert after["digest"] == before["digest"] and after["decisions"] == before["decisions"]
        assert (after["status"], after["step"], after["started"]) == ("running", 0, before["started"])

        r = httpx.post(gw.url + "/admin/canary/pictures/pause", headers=ADMIN, timeout=10)
        assert r.status_code == 200, r.text
        posts = receiver.wait(5, 12)
        assert len(posts) == 5, "the start was not sent again"
        (t4, h4, b4), (t5, h5, b5) = posts[3:]
        assert b4 == b5 and h4["webhook-id"] == h5["webhook-id"]
        pause = json.loads(b4)
        assert (pause["action"], pause["by"], pause["rollout"]) == ("pause", "operator", before["digest"])
        assert signed_by("secret-two", h4, b4) and not signed_by("secret-one", h4, b4)
        assert 5.0 <= t5 - t4 < 8.5, f"the slow try was given up after {t5 - t4:.1f} s"
        assert [d["action"] for d in rollout_of(gw)["decisions"]] == ["start", "pause"], "never restarted"
    finally:
        receiver.close()


# -- 5. at most 4 shadows ---------------------------------------------------------------------


def test_at_most_four_shadows_are_in_flight_at_once(
    gateway: Callable[[str], GatewayProcess], state_redis: RedisProcess
) -> None:
    """A shadow starts only while the canary's backend has nothing in flight, but that
    is read when the baseline's answer is counted, before the shadow reaches its
    backend: eight clients' answers, made in one Triton batch (150 ms), are counted in
    one turn of the event loop, and each would start a shadow (5 to 8 at once were seen
    without the limit). The canary (400 ms a request, on its own backend) serves nobody
    at weight 0, so its requests in flight are the shadows: they reach 4 and never pass
    it; the mirrors beyond are ``skipped_busy``."""
    rollout = "{shadow: {fraction: 1.0, duration_s: 600}, steps: [50], interval_s: 600}"
    gw = gateway(routes(state_redis.url, "shadowed", rollout, base="batched"))
    wait_for(gw, lambda s: s["status"] == "shadow", 10)
    inflight = re.compile(r'^router_model_inflight\{model="shadowed"\} (\S+)$', re.MULTILINE)
    seen: list[float] = [0.0]
    full = 0  # bursts that filled the 4 (not every turn counts a whole batch at once)
    with Traffic(gw, clients=8):
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and full < 3 and max(seen) <= 4:
            found = inflight.search(httpx.get(gw.url + "/metrics", headers=ADMIN, timeout=10).text)
            seen.append(float(found.group(1)) if found else 0.0)
            full += seen[-1] >= 4 > seen[-2]
            time.sleep(0.05)
    state = rollout_of(gw)
    assert max(seen) == 4, f"shadows in flight: max {max(seen)} over {len(seen)} scrapes: {seen}"
    assert state["shadow"]["mirrored"] >= 4 and state["shadow"]["skipped_busy"] > 0, state["shadow"]
    assert (state["status"], state["weight"]) == ("shadow", 0)


# -- 6. shadow to the first step; a reload that changes nothing else -----------------------------


def test_the_shadow_stage_moves_to_the_first_step_after_its_duration_and_a_reload_keeps_it(
    gateway: Callable[[str], GatewayProcess], state_redis: RedisProcess
) -> None:
    """A healthy canary in a 3 s shadow stage. During it, routes.yaml is edited outside
    the rollout (the route's budget, the canary's file weight, the default route): the
    reload leaves the rollout running (same digest, start and decisions). Once the 3 s
    are over and the shadow results pass, the first step (25 %) begins, and users start
    to see the canary."""
    analysis = "{min_samples: 10, max_p95_ratio: 3}"
    rollout = f"{{shadow: {{fraction: 1.0, duration_s: 3}}, steps: [25, 100], interval_s: 600, analysis: {analysis}}}"
    text = routes(state_redis.url, "mirrored", rollout)
    gw = gateway(text)
    with Traffic(gw, clients=2) as traffic:
        shadow = wait_for(gw, lambda s: s["status"] == "shadow", 10)
        edited = text.replace("budget_ms: 10000\n    fallback", "budget_ms: 9000\n    fallback")
        edited = edited.replace("weight: 5", "weight: 30")
        edited = edited.replace("model: base, budget_ms: 10000", "model: base, budget_ms: 8000")
        assert edited.count("9000") == edited.count("8000") == 1 and "weight: 30" in edited
        reload_with(gw, edited)
        kept = rollout_of(gw)
        assert kept["status"] == "shadow" and kept["weight"] == 0, "the file's weight is not the live weight"
        assert (kept["digest"], kept["started"], kept["decisions"]) == (
            shadow["digest"], shadow["started"], shadow["decisions"]
        )  # fmt: skip
        state = wait_for(gw, lambda s: s["status"] == "running", 30)
        assert (state["step"], state["next_weight"]) == (0, 25)
        start, advance = state["decisions"]
        assert (start["action"], start["status"]) == ("start", "shadow")
        assert (advance["action"], advance["by"], advance["from_weight"], advance["weight"]) == (
            "advance", "analysis", 0, 25
        )  # fmt: skip
        assert advance["at"] - start["at"] >= 3.0, "not before duration_s"
        assert advance["samples"]["canary"] >= 10 and advance["arms"]["canary"]["requests"] >= 10
        assert state["shadow"]["mirrored"] >= 10
        wait_for(gw, lambda s: s["weight"] == 25, 10)
        deadline = time.monotonic() + 10
        while not any(h.get("x-router-canary") == "true" for _, h in traffic.answers[-50:]):
            assert time.monotonic() < deadline, "no user was served by the canary at 25 %"
            time.sleep(0.1)
