"""Signing and verifying operation-completion webhooks (`backend/webhooks.py`)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from backend import webhooks
from backend.errors import Unauthorized

SECRET = "whsec-test"
BODY = b'{"success": true, "result": {"ok": 1}}'
NOW = 1_700_000_000.0
TOLERANCE = 300.0


def verify(timestamp: str | None, signature: str | None, body: bytes = BODY, *, secret: str = SECRET) -> None:
    webhooks.verify(secret, timestamp, signature, body, tolerance_seconds=TOLERANCE, now=NOW)


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert webhooks.sign(SECRET, "1700000000", BODY) == f"sha256={expected}"


def test_signed_headers_verify() -> None:
    headers = webhooks.signed_headers(SECRET, BODY, now=NOW)
    assert headers[webhooks.TIMESTAMP_HEADER] == "1700000000"
    assert headers["content-type"] == "application/json"
    verify(headers[webhooks.TIMESTAMP_HEADER], headers[webhooks.SIGNATURE_HEADER])


def test_signed_headers_default_to_now() -> None:
    headers = webhooks.signed_headers(SECRET, BODY)
    webhooks.verify(
        SECRET, headers[webhooks.TIMESTAMP_HEADER], headers[webhooks.SIGNATURE_HEADER], BODY, tolerance_seconds=5
    )


@pytest.mark.parametrize("skew", [-TOLERANCE, TOLERANCE])
def test_timestamps_at_the_edge_of_the_window_pass(skew: float) -> None:
    timestamp = str(int(NOW + skew))
    verify(timestamp, webhooks.sign(SECRET, timestamp, BODY))


def _signed(timestamp: str, body: bytes = BODY, secret: str = SECRET) -> tuple[str, str]:
    return timestamp, webhooks.sign(secret, timestamp, body)


@pytest.mark.parametrize(
    ("timestamp", "signature", "body", "reason"),
    [
        (None, None, BODY, "missing"),
        (None, webhooks.sign(SECRET, "1700000000", BODY), BODY, "missing"),
        ("1700000000", None, BODY, "missing"),
        ("", "", BODY, "missing"),
        ("yesterday", webhooks.sign(SECRET, "yesterday", BODY), BODY, "malformed"),
        ("1.7e9", webhooks.sign(SECRET, "1.7e9", BODY), BODY, "malformed"),
        # replayed: a genuine signature, but older (or newer) than the replay window
        (*_signed(str(int(NOW - TOLERANCE - 1))), BODY, "replay window"),
        (*_signed(str(int(NOW + TOLERANCE + 1))), BODY, "replay window"),
        # badly signed
        (*_signed("1700000000", secret="another-secret"), BODY, "bad webhook signature"),
        (*_signed("1700000000"), BODY + b" ", "bad webhook signature"),  # body tampered with
        ("1700000001", webhooks.sign(SECRET, "1700000000", BODY), BODY, "bad webhook signature"),  # moved in time
        ("1700000000", webhooks.sign(SECRET, "1700000000", BODY).removeprefix("sha256="), BODY, "bad"),
        ("1700000000", webhooks.sign(SECRET, "1700000000", BODY).upper(), BODY, "bad"),
        ("1700000000", "sha256=" + "0" * 64, BODY, "bad webhook signature"),
        ("1700000000", "sha256=é", BODY, "bad webhook signature"),  # not ASCII: refused, not a TypeError
    ],
)
def test_refused(timestamp: str | None, signature: str | None, body: bytes, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason) as info:
        verify(timestamp, signature, body)
    assert info.value.status_code == 401


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)  # the module `backend.webhooks` calls it from
    timestamp, signature = _signed("1700000000")
    verify(timestamp, signature)
    with pytest.raises(Unauthorized):
        verify(timestamp, "sha256=" + "f" * 64)
    assert len(compared) == 2
