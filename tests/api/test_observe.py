"""The request middleware on its own (a small Starlette app in process): an unhandled error is answered with the
request's id and logged with it, counted as a 500; the ids a request bound are gone once it ended, also when the
server runs requests in one task."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from backend.api.observe import ObserveRequests
from backend.observability.logs import bind, current_ids
from backend.observability.metrics import Metrics
from backend.observability.tracing import Tracing


async def broken(request: Request) -> PlainTextResponse:
    bind(user_id="alice")
    raise RuntimeError("boom")


async def fine(request: Request) -> PlainTextResponse:
    bind(user_id="bob")
    return PlainTextResponse(str(current_ids()))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(metrics: Metrics) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/broken", broken), Route("/items/{item}", fine)])
    app.add_middleware(ObserveRequests, metrics=metrics, tracing=Tracing.off())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def test_an_unhandled_error_is_answered_and_logged_with_the_request_id(
    client: httpx.AsyncClient, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="copilot.http")
    r = await client.get("/broken", headers={"X-Request-ID": "edge-42"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "edge-42"
    assert r.json()["error"] == {"code": "internal_error", "message": "Something went wrong (request edge-42)."}
    (record,) = [rec for rec in caplog.records if rec.name == "copilot.http"]
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
    assert "GET /broken" in record.getMessage()
    sample = metrics.registry.get_sample_value(
        "copilot_http_requests_total", {"method": "GET", "route": "/broken", "status": "500"}
    )
    assert sample == 1


async def test_the_ids_of_a_request_end_with_it(client: httpx.AsyncClient) -> None:
    first = await client.get("/items/1", headers={"X-Request-ID": "r-1"})
    assert first.text == "{'request_id': 'r-1', 'user_id': 'bob'}"
    assert current_ids() == {}  # ASGITransport ran the request in this very task
    second = await client.get("/items/2")
    assert "r-1" not in second.text and second.headers["x-request-id"] in second.text
