"""Webhook URLs (the SSRF policy, with an injected resolver) and Standard Webhooks
signatures, checked by the ``openai`` SDK's own verifier."""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import pytest
from openai import OpenAI

from image_router.errors import InvalidWebhookUrl, WebhookUrlForbidden
from image_router.jobs.sign import webhook_headers
from image_router.jobs.webhook_url import resolve_target

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()


def resolving(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "url, addresses",
    [
        ("https://127.0.0.1/h", ["127.0.0.1"]),
        ("https://[::1]/h", ["::1"]),
        ("https://169.254.169.254/latest", ["169.254.169.254"]),
        ("https://10.0.0.1/h", ["10.0.0.1"]),
        ("https://100.64.0.1/h", ["100.64.0.1"]),
        ("https://[::ffff:127.0.0.1]/h", ["::ffff:127.0.0.1"]),
        ("https://2130706433/h", ["127.0.0.1"]),
        ("https://hooks.example/h", ["93.184.216.34", "192.168.1.5"]),  # one private address is enough
        ("https://rebind.example/h", ["fd00::1"]),
        ("https://0.0.0.0/h", ["0.0.0.0"]),
    ],
)
def test_non_public_addresses_are_refused(url: str, addresses: list[str]) -> None:
    with pytest.raises(WebhookUrlForbidden):
        resolve_target(url, (), resolving(*addresses))


def test_public_addresses_pass_and_are_pinned_and_allow_lists_open_only_their_networks() -> None:
    target = resolve_target("https://hooks.example:8443/in?x=1", (), resolving("93.184.216.34"))
    assert (target.address, target.host, target.port, target.path) == (
        "93.184.216.34",
        "hooks.example",
        8443,
        "/in?x=1",
    )
    local = resolve_target("http://127.0.0.1:9000/h", ("127.0.0.1/32",), resolving("127.0.0.1"))
    assert local.address == "127.0.0.1" and local.scheme == "http"
    with pytest.raises(WebhookUrlForbidden):
        resolve_target("http://10.0.0.1/h", ("127.0.0.1/32",), resolving("10.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example/",
        "https://user:pw@hooks.example/",
        "https://hooks.example/#f",
        "http://hooks.example/",
        "https://" + "a" * 2050,
    ],
)
def test_malformed_or_plain_text_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl):
        resolve_target(url, (), resolving("93.184.216.34"))


def test_signatures_verify_with_the_openai_sdk_during_a_rotation() -> None:
    """Signed by both secrets: a receiver holding either verifies; a changed body fails."""
    body = json.dumps({"type": "image_job.completed", "data": {"id": "imgjob_X"}}).encode()
    headers = webhook_headers([SECRET, OLD], "msg_1", int(time.time()), body)
    client = OpenAI(api_key="unused")
    for secret in (SECRET, OLD):
        client.webhooks.verify_signature(body, headers, secret=secret)
    with pytest.raises(Exception, match=r"(?i)signature"):
        client.webhooks.verify_signature(body + b" ", headers, secret=SECRET)
    client.close()


def test_deliveries_are_queued_for_the_events_asked_with_a_stable_message_id() -> None:
    """``started`` on the claim, ``completed`` for any terminal state; the message id is
    the event's (the same on every retry), and nothing is queued for events not asked."""
    from image_router.jobs.deliver import delivery_step
    from image_router.jobs.model import Job

    hook = {"url": "https://hooks.example/h", "events": ["started", "completed"]}
    queued = Job("imgjob_A", "acme", "draft", "r", {"n": 1}, 1.0, 100.0, 1000.0, webhook=hook)
    assert delivery_step(queued, 1.0).put == ()
    started = delivery_step(queued.claimed("x", 2.0), 2.0)
    assert json.loads(started.put[0][1])["type"] == "image_job.started" and started.add[0][:2] == ("wq", "msg_A_2")
    failed = queued.claimed("x", 2.0).finished("failed", 3.0, error={"code": "e"})
    assert json.loads(delivery_step(failed, 3.0).put[0][1])["type"] == "image_job.failed"
    only_done = dataclasses.replace(queued, webhook={**hook, "events": ["completed"]})
    assert delivery_step(only_done.claimed("x", 2.0), 2.0).put == ()
