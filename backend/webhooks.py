"""Signing and verifying operation-completion webhooks: HMAC-SHA256 over `<timestamp>.<body>`.

A sender sets `X-Copilot-Timestamp` (Unix seconds) and `X-Copilot-Signature: sha256=<hex>`. The receiver refuses a
missing or malformed signature, a timestamp outside the replay window, and any signature that does not match
(compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from backend.errors import Unauthorized

TIMESTAMP_HEADER = "x-copilot-timestamp"
SIGNATURE_HEADER = "x-copilot-signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers a service sends with `body` (used by the example worker and by tests)."""
    timestamp = str(int(now if now is not None else time.time()))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    tolerance_seconds: float,
    now: float | None = None,
) -> None:
    """Raise `Unauthorized` unless `signature` signs `timestamp` and `body` and the timestamp is recent."""
    if not timestamp or not signature:
        raise Unauthorized("missing webhook signature")
    try:
        sent = int(timestamp)
    except ValueError as e:
        raise Unauthorized("malformed webhook timestamp") from e
    if abs((now if now is not None else time.time()) - sent) > tolerance_seconds:
        raise Unauthorized("webhook timestamp outside the replay window")
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode()):
        raise Unauthorized("bad webhook signature")
