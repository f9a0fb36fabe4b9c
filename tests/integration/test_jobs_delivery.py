"""Webhook deliveries as a job shows them, ``progress`` webhooks, an operator's
redelivery, and a pause of every replica's claims — against real processes: Triton,
two gateways sharing one SQLite state store, a webhook receiver on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.test_jobs import BODY, HOOKED, SECRET, SLOW, Receiver, submit, wait_for
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

EVERY = ["started", "progress", "completed"]


def test_a_job_reports_its_deliveries_sends_progress_and_an_operator_redelivers(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """A job of seconds that asked for every event: ``started``, ``progress`` (one per
    lease renewal, estimates rising, signed and verified by the openai SDK) and
    ``completed``; the job's view shows both queued deliveries delivered at the first
    attempt; a redelivery sends ``completed`` once more under the same webhook-id."""
    from openai import OpenAI

    receiver = Receiver([])
    try:
        gw = start_gateway(HOOKED)
        job_id = submit(gw, {**SLOW, "seed": 41, "webhook": receiver.url, "webhook_events": EVERY}).json()["id"]
        done = wait_for(gw, job_id, lambda j: j["status"] == "completed", 90)
        assert done["status"] == "completed", done
        deadline = time.monotonic() + 10
        while not any(json.loads(b)["type"] == "image_job.completed" for _, b in receiver.got):
            assert time.monotonic() < deadline, [json.loads(b)["type"] for _, b in receiver.got]
            time.sleep(0.1)
        client = OpenAI(api_key="unused")
        events = [(h, json.loads(client.webhooks.unwrap(b, h, secret=SECRET).to_json())) for h, b in receiver.got]
        types = [e["type"] for _, e in events]
        assert types[0] == "image_job.started" and types[-1] == "image_job.completed", types
        progress = [e["data"]["progress"] for _, e in events if e["type"] == "image_job.progress"]
        assert progress, f"a job of seconds with lease renewals every 0.5 s sent no progress: {types}"
        assert [p["percent"] for p in progress] == sorted(p["percent"] for p in progress)
        assert all(p["source"] == "estimate" and 0 <= p["percent"] < 100 for p in progress), progress
        ids = [h["webhook-id"] for h, _ in events]
        assert len(set(ids)) == len(ids), "every message its own id"

        shown = httpx.get(f"{gw.url}/v1/images/jobs/{job_id}", timeout=10).json()["webhook"]
        assert shown["url"] == receiver.url and shown["events"] == EVERY
        deliveries = [(d["type"], d["state"], d["attempts"], d["last_status"]) for d in shown["deliveries"]]
        assert deliveries == [("image_job.started", "delivered", 1, "2xx"),
                              ("image_job.completed", "delivered", 1, "2xx")], deliveries  # fmt: skip

        before = len(receiver.got)
        again = httpx.post(f"{gw.url}/admin/jobs/{job_id}/redeliver", headers=gw.admin, timeout=10)
        assert again.status_code == 200, again.text
        receiver.wait(before + 1)
        headers, body = receiver.got[-1]
        assert headers["webhook-id"] == ids[-1], "the same webhook-id: a receiver that had it ignores it"
        client.webhooks.verify_signature(body, headers, secret=SECRET)
        client.close()
        assert httpx.post(f"{gw.url}/admin/jobs/{job_id}/redeliver", timeout=10).status_code == 401
    finally:
        receiver.close()
    queued = submit(gw, {**SLOW, "seed": 42}).json()["id"]  # no webhook: nothing to redeliver
    refused = httpx.post(f"{gw.url}/admin/jobs/{queued}/redeliver", headers=gw.admin, timeout=10)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict", refused.text
    httpx.post(f"{gw.url}/v1/images/jobs/{queued}/cancel", timeout=10)


def test_a_pause_stops_every_replicas_claims_until_resumed(start_gateway: Callable[..., GatewayProcess]) -> None:
    """Paused through replica A, a job submitted to B stays queued on both (each reads
    the store's flag); resumed through B, it completes; a bad scope is a 400."""
    a = start_gateway(HOOKED)
    b = start_gateway(HOOKED)
    paused = httpx.post(f"{a.url}/admin/jobs/drain", params={"scope": "cluster"}, headers=a.admin, timeout=10)
    assert paused.status_code == 200 and paused.json()["paused"] is True, paused.text
    time.sleep(1.5)  # every replica has read the flag (it is read every second)
    job_id = submit(b, {**BODY, "seed": 7}).json()["id"]
    time.sleep(2.0)  # a draft job takes well under a second when anyone claims it
    assert wait_for(a, job_id, lambda j: False, 0)["status"] == "queued"
    overview = httpx.get(f"{b.url}/admin/jobs", headers=b.admin, timeout=10).json()
    assert overview["paused"] is True and overview["draining"] is False, overview
    resumed = httpx.post(f"{b.url}/admin/jobs/resume", params={"scope": "cluster"}, headers=b.admin, timeout=10)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert wait_for(a, job_id, lambda j: j["status"] == "completed", 30)["status"] == "completed"
    bad = httpx.post(f"{a.url}/admin/jobs/drain", params={"scope": "everything"}, headers=a.admin, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"].get("param") == "scope", bad.text
