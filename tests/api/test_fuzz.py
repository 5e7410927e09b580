"""A schema-driven fuzzer over `/openapi.json` against a live server: no request may get a 5xx or hang.

Schemathesis generates requests for every operation from the served OpenAPI schema, both ones that fit it and ones
that do not, with a valid bearer token (of an admin, so the admin endpoint is exercised too) and, for operations on
a session, half of the time the id of a real session the caller owns (so bodies reach the runner and Postgres, not
just the ownership check). The model is the project's mock server; webhooks have a secret, so they verify.

The requests are made from a worker thread with `requests` (schemathesis' transport) while the server runs in the
test's event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode

from backend.config import Settings
from tests.conftest import LiveServer, make_token

pytestmark = pytest.mark.slow

EXAMPLES_PER_RUN = 40
"""Requests per (operation, generation mode, path variant); hypothesis stops earlier for small input spaces."""
MIN_REQUESTS = 1000
REQUEST_TIMEOUT_S = 15.0
"""A request that takes longer is a hang (a turn with the mock model ends in well under a second)."""


@dataclass
class Report:
    requests: int = 0
    per_operation: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def fuzz(spec: dict[str, Any], base_url: str, token: str) -> Report:
    """Send generated requests for every operation of `spec` to `base_url`; what came back."""
    schema = schemathesis.openapi.from_dict(spec)
    report = Report()
    auth = {"authorization": f"Bearer {token}"}
    with requests.Session() as http:

        def own_session() -> str:
            r = http.post(f"{base_url}/api/chat/sessions", json={"title": "fuzz"}, headers=auth, timeout=10)
            r.raise_for_status()
            return str(r.json()["id"])

        for result in schema.get_all_operations():
            operation = result.ok()
            params = {p.name for p in operation.path_parameters}
            variants: list[dict[str, str] | None] = [None]
            if "session_id" in params:
                variants.append({"session_id": own_session()})
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for path_parameters in variants:
                    strategy = operation.as_strategy(
                        generation_mode=mode, headers=dict(auth), path_parameters=path_parameters
                    )
                    _run(strategy, operation.label, base_url, http, report)
    return report


def _run(strategy: Any, label: str, base_url: str, http: requests.Session, report: Report) -> None:
    @settings(
        max_examples=EXAMPLES_PER_RUN,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: every failure is reported as generated, with a curl command
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def send(case: schemathesis.Case) -> None:
        try:
            response = case.call(base_url=base_url, session=http, timeout=REQUEST_TIMEOUT_S)
        except requests.exceptions.Timeout:
            report.failures.append(f"no answer within {REQUEST_TIMEOUT_S} s: {_curl(case, base_url)}")
            return
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeEncodeError):
            return  # the client library refuses to send it: nothing reached the server
        report.requests += 1
        report.per_operation[label] += 1
        report.statuses[response.status_code] += 1
        if response.status_code >= 500:
            report.failures.append(f"{response.status_code} {response.text[:200]!r}: {_curl(case, base_url)}")

    try:
        send()
    except Unsatisfiable:
        return  # nothing in the operation can violate the schema (no parameters, no body): no negative cases


def _curl(case: schemathesis.Case, base_url: str) -> str:
    command = case.as_curl_command(base_url=base_url)
    return command if len(command) <= 2000 else f"{command[:2000]}… ({len(command)} characters)"


async def test_a_thousand_generated_requests_get_no_server_error_and_no_hang(chat_settings: Settings) -> None:
    fuzzed = chat_settings.model_copy(
        update={
            "webhook_secret": SecretStr("fuzz-webhook-secret-long-enough-32"),
            # Sessions' MCP servers on, so their endpoints get past the 403 (no URL the fuzzer makes is on the host).
            "mcp_allowed_hosts": ["mcp.example.com"],
            "mcp_headers_key": SecretStr(Fernet.generate_key().decode()),
        }
    )
    async with LiveServer(fuzzed) as live, httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        spec = (await client.get("/openapi.json")).json()
        token = make_token(f"fuzzer-{uuid.uuid4().hex[:8]}", roles=["admin"])
        report = await asyncio.to_thread(fuzz, spec, live.url, token)
        assert (await client.get("/health/live")).status_code == 200

    print(f"fuzzed {report.requests} requests: {dict(report.statuses)}; per operation: {dict(report.per_operation)}")
    operations = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    assert report.failures == [], "\n".join(report.failures[:20])
    assert set(report.per_operation) == operations, operations - set(report.per_operation)
    assert report.requests >= MIN_REQUESTS, (report.requests, report.per_operation)
    assert sum(n for status, n in report.statuses.items() if status < 300) > 100, report.statuses
