"""Signing and verifying operation-completion webhooks (v2).

A sender sets three headers: `X-Copilot-Timestamp` (Unix seconds), `X-Copilot-Delivery` (an id it chooses, unique
per delivery and kept when the same delivery is retried) and `X-Copilot-Signature: sha256=<hex>`, the HMAC-SHA256
with the shared secret of

    <timestamp>.<delivery id>.<operation id>.<body>

so a signature binds the operation it reports on (the id in the URL) and the delivery, not just the body: a captured
delivery cannot be re-posted to another operation's URL, and the receiver can refuse it when it comes again. The
timestamp is digits only and the two ids exclude `.`, so the string to sign splits one way only.

The receiver refuses (401) a missing header, a malformed timestamp or delivery id, a timestamp outside the replay
window and a signature that does not match (compared in constant time). A v1 sender (no delivery id, HMAC over
`<timestamp>.<body>`) gets a message that says what v2 expects. Recording delivery ids is the caller's job (see
`backend.streams.completions.publish_delivery`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid

from backend.errors import Unauthorized

TIMESTAMP_HEADER = "x-copilot-timestamp"
DELIVERY_HEADER = "x-copilot-delivery"
SIGNATURE_HEADER = "x-copilot-signature"

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a delivery id and an operation id may be: 1 to 128 of `A-Z a-z 0-9 _ -` (no `.`, the separator)."""

_TIMESTAMP = re.compile(r"[0-9]{1,12}")

V2_EXPECTED = (
    "webhook v2 expected: send X-Copilot-Timestamp, X-Copilot-Delivery (1-128 of A-Z a-z 0-9 _ -) and "
    "X-Copilot-Signature: sha256=<hex HMAC-SHA256 of '<timestamp>.<delivery>.<operation_id>.<body>'>"
)


def string_to_sign(timestamp: str, delivery_id: str, operation_id: str, body: bytes) -> bytes:
    return f"{timestamp}.{delivery_id}.{operation_id}.".encode() + body


def sign(secret: str, timestamp: str, delivery_id: str, operation_id: str, body: bytes) -> str:
    message = string_to_sign(timestamp, delivery_id, operation_id, body)
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str, operation_id: str, body: bytes, *, delivery_id: str | None = None, now: float | None = None
) -> dict[str, str]:
    """The headers a service sends with `body` to the webhook of `operation_id` (used by the example worker and
    by tests). Pass the same `delivery_id` when retrying a delivery, so a retry of one that did arrive is answered
    as a duplicate; without one a fresh random id is used."""
    timestamp = str(int(now if now is not None else time.time()))
    delivery = delivery_id if delivery_id is not None else uuid.uuid4().hex
    return {
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: delivery,
        SIGNATURE_HEADER: sign(secret, timestamp, delivery, operation_id, body),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    *,
    timestamp: str | None,
    delivery_id: str | None,
    signature: str | None,
    operation_id: str,
    body: bytes,
    tolerance_seconds: float,
    now: float | None = None,
) -> str:
    """Return the delivery id if `signature` signs this timestamp, delivery, operation and body and the timestamp
    is within `tolerance_seconds` of now; raise `Unauthorized` otherwise, with a message that never echoes what the
    request carried."""
    if not timestamp or not signature:
        raise Unauthorized(f"missing webhook signature; {V2_EXPECTED}")
    if not delivery_id:
        raise Unauthorized(f"missing X-Copilot-Delivery (a v1 signature?); {V2_EXPECTED}")
    if not ID_PATTERN.fullmatch(delivery_id):
        raise Unauthorized(f"malformed webhook delivery id; {V2_EXPECTED}")
    if not ID_PATTERN.fullmatch(operation_id):  # no operation has such an id; and `.` would make the split ambiguous
        raise Unauthorized("malformed operation id")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise Unauthorized("malformed webhook timestamp: expected Unix seconds")
    if abs((now if now is not None else time.time()) - int(timestamp)) > tolerance_seconds:
        raise Unauthorized("webhook timestamp outside the replay window")
    expected = sign(secret, timestamp, delivery_id, operation_id, body)
    # As bytes: `compare_digest` raises TypeError on a non-ASCII str instead of answering False.
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise Unauthorized("bad webhook signature")
    return delivery_id
