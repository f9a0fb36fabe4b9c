"""Async image jobs against real processes: Triton, gateways, Redis (docs/jobs.md).

Short jobs on the ``draft`` and ``noop`` tiers, so each test takes seconds."""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from image_router.triton import TritonServer
from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess, RedisProcess, scrape

pytestmark = pytest.mark.integration

JOBS = (
    TIERS
    + """
default_route: {name: default, model: draft, budget_ms: 30000}
jobs:
  lease_s: 1.5
  tiers: {draft: {max_running: 1}, quality: {max_running: 1}}
"""
)
QUALITY = {"prompt": "a castle", "model": "quality", "size": "64x64", "response_format": "b64_json", "seed": 3}
SLOW = {**QUALITY, "size": "256x256", "steps": 30}  # seconds of work: long enough to kill its gateway mid-job
BODY = {"prompt": "a lighthouse at dawn", "model": "draft", "size": "64x64", "response_format": "b64_json"}


def wait_for(
    gw: GatewayProcess, job_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = httpx.get(f"{gw.url}/v1/images/jobs/{job_id}", timeout=10).json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def submit(gw: GatewayProcess, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/images/jobs", json=body, headers=headers or {}, timeout=30)


def test_a_job_answers_what_the_synchronous_call_does(start_gateway: Callable[..., GatewayProcess]) -> None:
    """202 with the job and Location; it completes; /result is the synchronous answer's
    bytes for the same seed; a cancel of a finished job leaves it; another id is 404."""
    gw = start_gateway(JOBS)
    made = submit(gw, {**BODY, "seed": 7})
    assert made.status_code == 202, made.text
    job = made.json()
    assert job["object"] == "image.job" and job["status"] == "queued" and job["id"].startswith("imgjob_")
    assert made.headers["location"] == f"/v1/images/jobs/{job['id']}" and made.headers["retry-after"]
    done = wait_for(gw, job["id"], lambda j: j["status"] == "completed")
    assert done["status"] == "completed" and done["attempts"] == 1, done
    result = httpx.get(f"{gw.url}/v1/images/jobs/{job['id']}/result", timeout=10)
    sync = httpx.post(f"{gw.url}/v1/images/generations", json={**BODY, "seed": 7}, timeout=30)
    assert result.status_code == 200 and sync.status_code == 200, (result.text, sync.text)
    ours, theirs = result.json()["data"][0]["b64_json"], sync.json()["data"][0]["b64_json"]
    assert base64.b64decode(ours) == base64.b64decode(theirs)
    again = httpx.post(f"{gw.url}/v1/images/jobs/{job['id']}/cancel", timeout=10).json()
    assert again["status"] == "completed", "a finished job is not cancelled"
    missing = httpx.get(f"{gw.url}/v1/images/jobs/imgjob_nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


def test_a_job_submitted_to_an_idle_gateway_starts_at_once(start_gateway: Callable[..., GatewayProcess]) -> None:
    """An idle runner looks at the store only every second; a submission here nudges it,
    so each job starts within a small fraction of that (the store's own timestamps). Four
    jobs, each submitted after the last one ended: without the nudge, each would wait a
    random part of a second, and all four starting this soon has odds of 1 in 16."""
    gw = start_gateway(JOBS)
    waits = []
    for seed in range(4):
        made = submit(gw, {**BODY, "seed": seed})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        assert wait_for(gw, job_id, lambda j: j["status"] == "completed")["status"] == "completed"
        shown = httpx.get(f"{gw.url}/admin/jobs/{job_id}", headers=gw.admin, timeout=10).json()
        waits.append(shown["started_at"] - shown["created_at"])
        time.sleep(0.3)  # the runner goes idle again
    assert max(waits) < 0.5, waits


def b64(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["data"][0]["b64_json"])


def events(gw: GatewayProcess, job_id: str, last: int = 0) -> list[dict[str, Any]]:
    """The job's event stream read to its end (the terminal event)."""
    out: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": str(last)} if last else {}
    with httpx.stream("GET", f"{gw.url}/v1/images/jobs/{job_id}/events", headers=headers, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


def test_two_replicas_share_jobs_on_redis(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """20 concurrent POSTs with one Idempotency-Key on two replicas make one job; it is
    submitted on A and streamed, polled and fetched on B; its bytes are A's synchronous
    answer for the same seed."""
    redis = RedisProcess(tmp_path, policy="noeviction").start()
    try:
        routes = JOBS + f"state: {{store: '{redis.url}'}}\n"
        a, b = start_gateway(routes, "a.yaml"), start_gateway(routes, "b.yaml")
        body = {**BODY, "seed": 11}

        def post(i: int) -> httpx.Response:
            return submit(a if i % 2 else b, body, {"Idempotency-Key": "order-42"})

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(post, range(20)))
        assert {r.status_code for r in answers} <= {200, 202}, [r.text for r in answers]
        ids = {r.json()["id"] for r in answers}
        assert len(ids) == 1, ids
        assert sum(r.status_code == 202 for r in answers) == 1
        assert all(r.headers.get("idempotent-replayed") == "true" for r in answers if r.status_code == 200)
        (job_id,) = ids
        stream = events(b, job_id)
        kinds = [e["type"] for e in stream]
        assert kinds[0] == "image_job.queued" and kinds[-1] == "image_job.completed", kinds
        assert "image_job.started" in kinds
        assert [e["sequence_number"] for e in stream] == sorted(e["sequence_number"] for e in stream)
        resumed = events(b, job_id, last=stream[-2]["sequence_number"])
        assert [e["type"] for e in resumed] == ["image_job.completed"], "Last-Event-ID resumes after it"
        done = httpx.get(f"{b.url}/v1/images/jobs/{job_id}", headers={"Prefer": "wait=5"}, timeout=10).json()
        assert done["status"] == "completed"
        sync = httpx.post(f"{a.url}/v1/images/generations", json=body, timeout=30)
        assert b64(httpx.get(f"{b.url}/v1/images/jobs/{job_id}/result", timeout=10)) == b64(sync)
        reused = submit(b, {**body, "seed": 12}, {"Idempotency-Key": "order-42"})
        assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
        assert reused.headers["x-should-retry"] == "false"
    finally:
        redis.stop()


def test_a_killed_replica_s_job_is_finished_by_another(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """SIGKILL the replica running a quality job: the other takes it over when its lease
    lapses and finishes it — one terminal state, attempts 2, the same image as the
    synchronous answer for its seed."""
    redis = RedisProcess(tmp_path, policy="noeviction").start()
    try:
        routes = JOBS + f"state: {{store: '{redis.url}'}}\n"
        a = start_gateway(routes, "a.yaml")
        job_id = submit(a, SLOW).json()["id"]
        running = wait_for(a, job_id, lambda j: j["status"] != "queued")
        assert running["status"] == "in_progress", running
        assert running["progress"]["source"] == "estimate" and 0 <= running["progress"]["percent"] <= 95
        b = start_gateway(routes, "b.yaml")
        still = httpx.get(f"{b.url}/v1/images/jobs/{job_id}", timeout=10).json()
        assert still["status"] == "in_progress", "the test needs A to die mid-job"
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
        done = wait_for(b, job_id, lambda j: j["status"] in ("completed", "failed"))
        assert done["status"] == "completed" and done["attempts"] == 2, done
        kinds = [e["type"] for e in events(b, job_id)]
        assert kinds.count("image_job.completed") == 1 and kinds.count("image_job.started") == 2, kinds
        sync = httpx.post(f"{b.url}/v1/images/generations", json=SLOW, timeout=60)
        assert b64(httpx.get(f"{b.url}/v1/images/jobs/{job_id}/result", timeout=10)) == b64(sync)
    finally:
        redis.stop()


def test_a_stopped_replica_hands_its_job_back(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """SIGTERM the replica running a job: it hands the job back at once (the attempt not
    counted) and the other replica finishes it without waiting out the lease."""
    redis = RedisProcess(tmp_path, policy="noeviction").start()
    try:
        routes = JOBS.replace("lease_s: 1.5", "lease_s: 60") + f"state: {{store: '{redis.url}'}}\n"
        a = start_gateway(routes, "a.yaml")
        job_id = submit(a, SLOW).json()["id"]
        assert wait_for(a, job_id, lambda j: j["status"] != "queued")["status"] == "in_progress"
        b = start_gateway(routes, "b.yaml")
        a.stop()
        back = httpx.get(f"{b.url}/v1/images/jobs/{job_id}", timeout=10).json()
        assert back["status"] in ("queued", "in_progress") and back["attempts"] <= 1, back
        done = wait_for(b, job_id, lambda j: j["status"] in ("completed", "failed"), 120)
        assert done["status"] == "completed" and done["attempts"] == 1, done  # a reaped job would count 2
    finally:
        redis.stop()


def test_a_restart_loses_no_queued_job_on_sqlite(start_gateway: Callable[..., GatewayProcess]) -> None:
    """One machine, SQLite state: three quality jobs queued, the gateway killed while the
    first runs and started again: all three complete, the interrupted one on attempt 2."""
    gw = start_gateway(JOBS)
    ids = [submit(gw, {**(SLOW if i == 0 else QUALITY), "seed": 20 + i}).json()["id"] for i in range(3)]
    first = wait_for(gw, ids[0], lambda j: j["status"] != "queued")
    assert first["status"] == "in_progress"
    gw.process.send_signal(signal.SIGKILL)
    gw.process.wait()
    again = start_gateway(JOBS)  # the same routes file and state directory
    finished = [wait_for(again, i, lambda j: j["status"] in ("completed", "failed"), 90) for i in ids]
    assert [j["status"] for j in finished] == ["completed"] * 3, finished
    assert finished[0]["attempts"] == 2 and [j["attempts"] for j in finished[1:]] == [1, 1]


GRPC_JOBS = """
backends:
  triton: {{url: "${{TRITON_URL}}", protocol: grpc, grpc_urls: ["127.0.0.1:{grpc_port}"]}}
models:
  quality: {{backend: triton, triton_model: quality, latency_hint_ms: 3500}}
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150}}
default_route: {{model: draft, budget_ms: 60000}}
jobs: {{lease_s: 1.5}}
"""


def test_cancel_stops_a_running_job_over_grpc(
    start_gateway: Callable[..., GatewayProcess], triton: TritonServer
) -> None:
    """A running quality job cancelled: ``cancelling`` at once, ``cancelled`` within a
    heartbeat plus a denoising step; over gRPC Triton stops the request (its compute
    time, from Triton's statistics, stays well below a whole image's); its result is
    409 job_cancelled, not to be retried."""
    gw = start_gateway(GRPC_JOBS.format(grpc_port=triton.config.grpc_port), "grpc.yaml")
    before = quality_stats(triton)
    job_id = submit(gw, SLOW).json()["id"]
    assert wait_for(gw, job_id, lambda j: j["status"] != "queued")["status"] == "in_progress"
    time.sleep(1.0)
    asked_at = time.monotonic()
    asked = httpx.post(f"{gw.url}/v1/images/jobs/{job_id}/cancel", timeout=10).json()
    assert asked["status"] in ("cancelling", "cancelled"), asked
    done = wait_for(gw, job_id, lambda j: j["status"] not in ("in_progress", "cancelling"), 15)
    took = time.monotonic() - asked_at
    assert done["status"] == "cancelled", done
    result = httpx.get(f"{gw.url}/v1/images/jobs/{job_id}/result", timeout=10)
    assert result.status_code == 409 and result.json()["error"]["code"] == "job_cancelled"
    assert result.headers["x-should-retry"] == "false"
    deadline = time.monotonic() + 15
    while (after := quality_stats(triton))["count"] == before["count"] and time.monotonic() < deadline:
        time.sleep(0.2)
    spent_s = (after["ns"] - before["ns"]) / 1e9  # Triton counts the stopped request's compute too
    assert httpx.post(f"{gw.url}/v1/images/generations", json=SLOW, timeout=120).status_code == 200
    whole_s = (quality_stats(triton)["ns"] - after["ns"]) / 1e9
    print(f"cancel -> cancelled in {took:.2f} s; the stopped request computed {spent_s:.2f} s, whole {whole_s:.2f} s")
    assert after["count"] == before["count"] + 1 and spent_s < 0.7 * whole_s, "Triton stopped it before its end"
    metrics = scrape(gw)  # the stopped run: wasted compute (its cancel reason is lost at a timeout boundary)
    wasted = sum(metrics.get(("router_compute_wasted_seconds_total", (("model", "quality"), ("reason", r))), 0.0)
                 for r in ("cancelled", "abandoned"))  # fmt: skip
    assert wasted > 0.5, "the stopped run's time is counted as wasted compute"


def quality_stats(triton: TritonServer) -> dict[str, int]:
    stats = httpx.get(f"{triton.http_url}/v2/models/quality/stats", timeout=10).json()
    infer = stats["model_stats"][0]["inference_stats"]["compute_infer"]
    return {"count": int(infer["count"]), "ns": int(infer["ns"])}


def test_the_openai_sdk_submits_a_job_and_reads_its_result(start_gateway: Callable[..., GatewayProcess]) -> None:
    """``client.images.generate(..., Prefer: respond-async)`` parses the 202's job as an
    ImagesResponse with ``id``/``status`` extras; ``/result`` parses as ImagesResponse;
    ``409 job_not_finished`` is one request (x-should-retry: false stops the SDK's retries)."""
    from openai import APIStatusError, OpenAI
    from openai.types import ImagesResponse

    gw = start_gateway(JOBS)
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=3)
    job = client.images.generate(
        prompt="a lighthouse", model="draft", size="64x64",  # type: ignore[arg-type]
        extra_headers={"Prefer": "respond-async", "Idempotency-Key": "sdk-1"},
        extra_body={"metadata": {"order": "42"}, "seed": 5, "deadline_s": 600},
    )  # fmt: skip
    extra = job.model_extra or {}
    assert extra["status"] in ("queued", "in_progress", "completed") and extra["id"].startswith("imgjob_")
    slow = submit(gw, SLOW).json()["id"]  # something that is not finished when asked
    requests: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [requests.append]}) as http:
        counting = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=3, http_client=http)
        with pytest.raises(APIStatusError) as refused:
            counting.get(f"/images/jobs/{slow}/result", cast_to=ImagesResponse)
    assert refused.value.status_code == 409 and len(requests) == 1, "not retried"
    wait_for(gw, extra["id"], lambda j: j["status"] == "completed")
    result = client.get(f"/images/jobs/{extra['id']}/result", cast_to=ImagesResponse)
    assert result.data and result.data[0].url and result.data[0].url.endswith(".png")
    assert httpx.get(result.data[0].url, timeout=10).content.startswith(b"\x89PNG")
    client.close()


SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


class Receiver:
    """A webhook receiver on loopback answering ``statuses`` in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.got) >= count, f"{len(self.got)} of {count} deliveries arrived"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


HOOKED = (
    JOBS
    + f"""  webhook_secrets: ["{SECRET}"]
  webhook_allow_cidrs: ["127.0.0.1/32"]
  webhook_schedule_s: [0, 0.5, 4]
"""
)


def test_a_failing_receiver_gets_the_event_after_a_restart(start_gateway: Callable[..., GatewayProcess]) -> None:
    """The receiver answers 500, 500, 200: three attempts with one webhook-id, each
    signed (verified by the openai SDK), the third sent by the gateway restarted after
    the second; a private address is refused at submission where it is not allowed."""
    from openai import OpenAI

    receiver = Receiver([500, 500])
    try:
        gw = start_gateway(HOOKED)
        job_id = submit(gw, {**BODY, "webhook": receiver.url}).json()["id"]
        receiver.wait(2)
        time.sleep(1.0)  # the second attempt's outcome is written
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait()
        start_gateway(HOOKED)
        receiver.wait(3)
        time.sleep(1.0)
        assert len(receiver.got) == 3, "delivered, then never again"
        ids = {headers["webhook-id"] for headers, _ in receiver.got}
        assert len(ids) == 1, ids
        stamps = [int(headers["webhook-timestamp"]) for headers, _ in receiver.got]
        assert stamps == sorted(stamps)
        client = OpenAI(api_key="unused")
        for headers, body in receiver.got:
            client.webhooks.verify_signature(body, headers, secret=SECRET)
            event = json.loads(body)
            assert event["type"] == "image_job.completed" and event["data"]["id"] == job_id
        client.close()
    finally:
        receiver.close()
    strict = start_gateway(JOBS + f'  webhook_secrets: ["{SECRET}"]\n', "strict.yaml")
    for url in ("http://127.0.0.1:9/hooks", "https://10.0.0.1/hooks", "https://169.254.169.254/latest"):
        refused = submit(strict, {**BODY, "webhook": url})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "webhook_url_forbidden", refused.text
