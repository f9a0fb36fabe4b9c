"""Standard Webhooks signatures (https://www.standardwebhooks.com), as the ``openai`` SDK's
``client.webhooks.verify_signature`` and the ``standardwebhooks`` package check them.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, the
key being the base64 after a ``whsec_`` secret's prefix; one signature per configured
secret, space-separated, so a receiver holding either the new or the old secret
verifies during a rotation. ``webhook-id`` is the message's (unchanged on retries:
the receiver's idempotency key), ``webhook-timestamp`` the attempt's, in seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["signature", "webhook_headers"]


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
        "user-agent": "image-router-webhooks/1",
    }
