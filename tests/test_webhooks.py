"""Signing and verifying operation-completion webhooks, v2 (`backend/webhooks.py`)."""

from __future__ import annotations

import hashlib
import hmac
import subprocess

import pytest
from redis.crc import key_slot

from backend import keys, webhooks
from backend.errors import Unauthorized

SECRET = "whsec-test"
BODY = b'{"success": true, "result": {"ok": 1}}'
OP = "5f0c7a52-3d7e-4c43-9a55-0d3c2b0d9e11"
DELIVERY = "d-0001"
NOW = 1_700_000_000.0
TS = "1700000000"
TOLERANCE = 300.0


def verify(
    timestamp: str | None,
    signature: str | None,
    *,
    delivery: str | None = DELIVERY,
    operation_id: str = OP,
    body: bytes = BODY,
    secret: str = SECRET,
) -> str:
    return webhooks.verify(
        secret,
        timestamp=timestamp,
        delivery_id=delivery,
        signature=signature,
        operation_id=operation_id,
        body=body,
        tolerance_seconds=TOLERANCE,
        now=NOW,
    )


def signed(timestamp: str = TS, delivery: str = DELIVERY, operation_id: str = OP, body: bytes = BODY) -> str:
    return webhooks.sign(SECRET, timestamp, delivery, operation_id, body)


def test_signature_is_hmac_sha256_over_timestamp_delivery_operation_and_body() -> None:
    message = f"{TS}.{DELIVERY}.{OP}.".encode() + BODY
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert webhooks.sign(SECRET, TS, DELIVERY, OP, BODY) == f"sha256={expected}"


def test_the_documented_openssl_example_gives_the_same_signature() -> None:
    """docs/api.md shows how to sign with openssl; a sender in another language follows the same bytes."""
    message = webhooks.string_to_sign(TS, DELIVERY, OP, BODY)
    run = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET, "-r"], input=message, capture_output=True, check=True
    )
    assert webhooks.sign(SECRET, TS, DELIVERY, OP, BODY) == "sha256=" + run.stdout.split()[0].decode()


def test_signed_headers_verify_and_return_the_delivery_id() -> None:
    headers = webhooks.signed_headers(SECRET, OP, BODY, delivery_id="retry-me", now=NOW)
    assert headers[webhooks.TIMESTAMP_HEADER] == TS
    assert headers[webhooks.DELIVERY_HEADER] == "retry-me"
    assert headers["content-type"] == "application/json"
    assert verify(TS, headers[webhooks.SIGNATURE_HEADER], delivery="retry-me") == "retry-me"


def test_signed_headers_default_to_now_and_a_fresh_delivery_id() -> None:
    first, second = webhooks.signed_headers(SECRET, OP, BODY), webhooks.signed_headers(SECRET, OP, BODY)
    assert first[webhooks.DELIVERY_HEADER] != second[webhooks.DELIVERY_HEADER]
    assert webhooks.ID_PATTERN.fullmatch(first[webhooks.DELIVERY_HEADER])
    webhooks.verify(
        SECRET,
        timestamp=first[webhooks.TIMESTAMP_HEADER],
        delivery_id=first[webhooks.DELIVERY_HEADER],
        signature=first[webhooks.SIGNATURE_HEADER],
        operation_id=OP,
        body=BODY,
        tolerance_seconds=5,
    )


@pytest.mark.parametrize("skew", [-TOLERANCE, TOLERANCE])
def test_timestamps_at_the_edge_of_the_window_pass(skew: float) -> None:
    timestamp = str(int(NOW + skew))
    verify(timestamp, signed(timestamp))


@pytest.mark.parametrize("delivery", ["a", "x" * 128, "0f9a-B_7", "report-1700000000000-0"])
def test_delivery_ids_of_the_allowed_charset_pass(delivery: str) -> None:
    verify(TS, signed(delivery=delivery), delivery=delivery)


def _v1(timestamp: str, body: bytes = BODY) -> str:
    """What a v1 sender sent: HMAC over `<timestamp>.<body>` only, and no delivery id."""
    return "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("timestamp", "signature", "changes", "reason"),
    [
        (None, None, {}, "missing webhook signature"),
        (None, signed(), {}, "missing webhook signature"),
        (TS, None, {}, "missing webhook signature"),
        ("", "", {}, "missing webhook signature"),
        # v1: no delivery id (and a signature over timestamp.body) is refused with what v2 expects
        (TS, _v1(TS), {"delivery": None}, r"missing X-Copilot-Delivery.*webhook v2 expected.*<timestamp>\.<delivery>"),
        (TS, _v1(TS), {"delivery": ""}, "missing X-Copilot-Delivery"),
        (TS, _v1(TS), {}, "bad webhook signature"),  # a v1 signature with a delivery id added
        # malformed delivery ids: bounded length and charset (no `.`, the separator of the signed string)
        (TS, signed(delivery="a.b"), {"delivery": "a.b"}, "malformed webhook delivery id"),
        (TS, signed(delivery="x" * 129), {"delivery": "x" * 129}, "malformed webhook delivery id"),
        (TS, signed(delivery="a b"), {"delivery": "a b"}, "malformed webhook delivery id"),
        (TS, signed(delivery="é"), {"delivery": "é"}, "malformed webhook delivery id"),
        (TS, signed(delivery="a\n"), {"delivery": "a\n"}, "malformed webhook delivery id"),
        # malformed timestamps
        ("yesterday", signed("yesterday"), {}, "malformed webhook timestamp"),
        ("1.7e9", signed("1.7e9"), {}, "malformed webhook timestamp"),
        ("+1700000000", signed("+1700000000"), {}, "malformed webhook timestamp"),
        # replayed: a genuine signature, but older (or newer) than the replay window
        (str(int(NOW - TOLERANCE - 1)), signed(str(int(NOW - TOLERANCE - 1))), {}, "replay window"),
        (str(int(NOW + TOLERANCE + 1)), signed(str(int(NOW + TOLERANCE + 1))), {}, "replay window"),
        # tampered: each signed part changed on its own
        (TS, signed(), {"secret": "another-secret"}, "bad webhook signature"),
        (TS, signed(), {"body": BODY + b" "}, "bad webhook signature"),
        (TS, signed(), {"operation_id": "another-operation"}, "bad webhook signature"),  # redirected
        (TS, signed(), {"delivery": "d-0002"}, "bad webhook signature"),  # a new delivery id on an old delivery
        ("1700000001", signed(), {}, "bad webhook signature"),  # moved in time
        # parts moved across a separator give the same string to sign: refused as malformed ids
        (TS, signed(delivery="d", operation_id="x." + OP), {"delivery": "d.x"}, "malformed webhook delivery id"),
        (TS, signed(body=b'{"v": 1.5}'), {"operation_id": OP + '.{"v": 1', "body": b"5}"}, "malformed operation id"),
        (TS, signed(), {"operation_id": "x" * 129}, "malformed operation id"),
        # malformed signatures
        (TS, signed().removeprefix("sha256="), {}, "bad webhook signature"),
        (TS, signed().upper(), {}, "bad webhook signature"),
        (TS, "sha256=" + "0" * 64, {}, "bad webhook signature"),
        (TS, "sha256=é", {}, "bad webhook signature"),  # not ASCII: refused, not a TypeError
    ],
)
def test_refused(timestamp: str | None, signature: str | None, changes: dict[str, object], reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason) as info:
        verify(timestamp, signature, **changes)  # type: ignore[arg-type]
    assert info.value.status_code == 401


def test_refusals_never_echo_what_the_request_carried() -> None:
    forged = "sha256=" + "ab" * 32
    for changes in ({}, {"delivery": "<script>"}, {"delivery": None}):
        with pytest.raises(Unauthorized) as info:
            verify(TS, forged, **changes)  # type: ignore[arg-type]
        assert forged not in info.value.message and "<script>" not in info.value.message
        assert OP not in info.value.message and BODY.decode() not in info.value.message


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)  # the module `backend.webhooks` calls it from
    verify(TS, signed())
    with pytest.raises(Unauthorized):
        verify(TS, "sha256=" + "f" * 64)
    assert len(compared) == 2


def test_a_delivery_key_shares_the_hash_slot_of_the_completions_stream() -> None:
    """The webhook records the delivery and appends the completion in one script: on a Redis Cluster both keys
    must live on one slot."""
    assert key_slot(keys.webhook_delivery(DELIVERY).encode()) == key_slot(keys.COMPLETIONS.encode())
    assert key_slot(keys.webhook_delivery("another").encode()) == key_slot(keys.COMPLETIONS.encode())
