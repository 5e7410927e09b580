"""`GET /metrics` end to end: turns over real HTTP against the mock model move the right counters and histograms;
the endpoint stays out of the schema, honours its token, and can move to a port of its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from websockets.asyncio.client import connect

from backend.config import Settings
from backend.errors import ConfigurationError
from backend.observability.instruments import LAG_PROBE_SECONDS, watch_loop_lag
from backend.observability.metrics import Metrics
from tests.api.test_chat_stream import ALICE, new_session, send, wait_idle
from tests.conftest import LiveServer, auth, make_token
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def test_a_turn_with_a_tool_moves_the_turn_model_tool_and_storage_metrics(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = chat
    sid = await new_session(client)
    before = await scrape(client)
    _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
    assert b"42" in body
    await wait_idle(client, sid)
    await asyncio.sleep(0.1)  # the turn's end is recorded just after its last chunk
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("copilot_turns_started_total") == 1
    assert moved("copilot_turns_finished_total", outcome="completed") == 1
    assert value(after, "copilot_turns_running") == 0
    assert moved("copilot_turn_time_to_first_token_seconds_count") == 1
    assert moved("copilot_turn_duration_seconds_count", outcome="completed") == 1
    # two steps: the tool call, then the answer that uses its result
    assert moved("copilot_model_calls_total", model="mock-model", outcome="ok") == 2
    assert moved("copilot_model_call_duration_seconds_count", model="mock-model") == 2
    assert moved("copilot_model_tokens_total", model="mock-model", direction="input") > 0
    assert moved("copilot_model_tokens_total", model="mock-model", direction="output") > 0
    assert moved("copilot_tool_calls_total", tool="calculate", outcome="ok") == 1
    assert moved("copilot_tool_call_duration_seconds_count", tool="calculate") == 1
    route = "/api/chat/sessions/{session_id}/stream"
    assert moved("copilot_http_requests_total", method="POST", route=route, status="200") == 1
    assert moved("copilot_http_request_duration_seconds_count", method="POST", route=route) == 1
    assert moved("copilot_redis_command_duration_seconds_count", command="EVALSHA") > 0
    assert moved("copilot_postgres_query_duration_seconds_count", statement="SELECT") > 0
    # a finished stream is no longer counted as open
    assert value(after, "copilot_streams_open", transport="sse") == 0


async def test_model_retries_and_final_errors_are_counted_by_provider_code(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, _ = chat
    sid = await new_session(client)
    before = await scrape(client)
    await send(client, sid, "[[mock:server_error times=1 key=once status=503]] hello")
    await wait_idle(client, sid)
    _, body = await send(client, sid, "[[mock:region_block]]")
    assert b'"type":"error"' in body
    await asyncio.sleep(0.1)
    after = await scrape(client)
    assert (
        total(after, "copilot_model_retries_total", code="server_error")
        - total(before, "copilot_model_retries_total", code="server_error")
        == 1
    )
    blocked = "unsupported_country_region_territory"
    assert (
        total(after, "copilot_model_errors_total", code=blocked)
        - total(before, "copilot_model_errors_total", code=blocked)
        == 1
    )
    assert (
        total(after, "copilot_turns_finished_total", outcome="failed")
        - total(before, "copilot_turns_finished_total", outcome="failed")
        == 1
    )


async def test_unmatched_paths_share_one_route_label(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    for n in range(3):
        assert (await client.get(f"/no/such/{n}")).status_code == 404
    after = await scrape(client)
    assert value(after, "copilot_http_requests_total", method="GET", route="unmatched", status="404") == 3
    assert not any("/no/such" in str(labels) for _, labels in after)


async def test_the_endpoint_is_not_in_the_schema(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    schema = (await client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    guarded = settings.model_copy(update={"metrics_token": SecretStr("scrape-me-please")})
    async with LiveServer(guarded) as live, httpx.AsyncClient(base_url=live.url) as client:
        yield client


async def test_a_metrics_token_is_required_when_set(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/metrics")).status_code == 401
    wrong = await guarded.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert (await guarded.get("/metrics", headers=auth("alice"))).status_code == 401  # a user's JWT is not it
    await scrape(guarded, Authorization="Bearer scrape-me-please")


async def test_per_user_limit_refusals_are_counted_by_limit(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit_requests_per_minute": 2})
    async with LiveServer(limited) as live, httpx.AsyncClient(base_url=live.url) as client:
        codes = [(await client.get("/api/chat/sessions", headers=ALICE)).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        after = await scrape(client)
    assert value(after, "copilot_rate_limit_refusals_total", limit="requests_per_minute") == 2
    assert value(after, "copilot_http_requests_total", method="GET", route="/api/chat/sessions", status="429") == 2


async def test_metrics_on_a_port_of_their_own(settings: Settings) -> None:
    port = free_port()
    apart = settings.model_copy(update={"metrics_port": port, "host": "127.0.0.1"})
    async with LiveServer(apart) as live, httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/metrics")).status_code == 404
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            samples = await scrape(scraper)
        assert value(samples, "copilot_http_requests_total", method="GET", route="/health/live", status="200") == 1
    with pytest.raises(httpx.TransportError):  # closed with the app
        async with httpx.AsyncClient() as late:
            await late.get(f"http://127.0.0.1:{port}/metrics")


async def test_background_gauges_sample_the_shared_backlog(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    samples = await scrape(client)
    # sampled once at startup: an empty test database and Redis have nothing waiting
    assert ("copilot_operations_pending", frozenset()) in samples
    assert value(samples, "copilot_operations_pending") == 0
    assert value(samples, "copilot_completion_consumer_lag") == 0
    assert value(samples, "copilot_completion_dead_letters") == 0
    assert value(samples, "process_resident_memory_bytes") > 0  # the process's own, in a single process


def test_multiprocess_mode_needs_the_variable_in_the_environment(tmp_path: Path) -> None:
    # prometheus_client reads PROMETHEUS_MULTIPROC_DIR when imported (the tests' environment has none): a setting
    # that only the service's settings saw would count each worker apart while claiming to add them up.
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess_dir=tmp_path)


_WORKER = """
import os
import sys
from pathlib import Path
from backend.observability.instruments import LAG_PROBE_SECONDS, watch_loop_lag
from backend.observability.metrics import Metrics
metrics = Metrics(multiprocess_dir=Path(sys.argv[1]))
if sys.argv[2] == "count":
    metrics.turns_started.inc()
    metrics.child(metrics.tool_calls, "calculate", "ok").inc()
    metrics.turns_running.inc()
    sys.stdout.write(str(os.getpid()))
else:
    sys.stdout.write(metrics.exposition()[0].decode())
"""


def test_multiprocess_mode_adds_up_every_worker(tmp_path: Path) -> None:
    """Workers of one server (gunicorn) write their own files; a scrape of any of them reads all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _WORKER, str(tmp_path), mode], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = int(run("count"))
    run("count")
    samples = parse(run("scrape"))
    assert value(samples, "copilot_turns_started_total") == 2
    assert value(samples, "copilot_tool_calls_total", tool="calculate", outcome="ok") == 2
    assert value(samples, "copilot_turns_running") == 2
    # `livesum`: once the server marks a worker dead (gunicorn's child_exit hook), its running turns no longer count
    mark_process_dead(first, str(tmp_path))
    samples = parse(run("scrape"))
    assert value(samples, "copilot_turns_running") == 1
    assert value(samples, "copilot_turns_started_total") == 2  # counters keep what the dead worker counted


async def test_an_open_websocket_is_counted_while_it_lasts(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, live = chat
    sid = await new_session(client)
    url = f"ws://127.0.0.1:{live.port}/api/chat/sessions/{sid}/ws?token={make_token('alice')}"
    async with connect(url, proxy=None, open_timeout=5) as ws:
        assert ws.response is not None and ws.response.headers["x-request-id"]
        await ws.send('{"type": "ping"}')
        await asyncio.wait_for(ws.recv(), 10)
        assert value(await scrape(client), "copilot_streams_open", transport="websocket") == 1
    for _ in range(100):  # the server sees the close a moment later
        if value(await scrape(client), "copilot_streams_open", transport="websocket") == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the closed WebSocket is still counted")


async def test_a_blocked_event_loop_shows_as_lag() -> None:
    metrics = Metrics()
    watcher = asyncio.create_task(watch_loop_lag(metrics))
    await asyncio.sleep(0)  # the watcher starts its first probe
    time.sleep(LAG_PROBE_SECONDS + 0.3)  # noqa: ASYNC251 (on purpose: a synchronous call holds the loop)
    await asyncio.sleep(0.05)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    lag = metrics.registry.get_sample_value("copilot_event_loop_lag_seconds_sum")
    assert lag is not None and lag >= 0.25
