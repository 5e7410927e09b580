"""Structured logs: every line a JSON object (or a text line) with the ids of the request and the turn it belongs to,
credentials masked in both formats, message text only when asked for.

The live test runs `copilot serve` in a subprocess with its own logging set-up, as in production, and follows one
request into the turn it starts: the lines of the turn's task (the runner's, the model client's) carry the request's
id as well as the turn's, so one grep finds a turn across pods."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backend.devtools.mock_llm import MockLLMServer
from backend.log_redaction import REDACTED, RedactSecrets
from backend.observability.logs import JsonFormatter, LogContext, TextFormatter, bind, request_scope
from tests.conftest import make_token, serve_env
from tests.helpers import copilot_serve, wait_until_ready
from tests.sse import read_stream


class _Lines(logging.Handler):
    """A handler set up as `configure_logging` sets the root's: ids stamped, credentials masked, then formatted."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.addFilter(LogContext())
        self.addFilter(RedactSecrets())
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("copilot.test-logs")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    log.handlers.clear()


def test_a_json_line_has_time_level_logger_message_and_the_bound_ids(logger: logging.Logger) -> None:
    lines = _Lines(JsonFormatter())
    logger.addHandler(lines)
    logger.info("outside any request")
    with request_scope("req-1"):
        bind(user_id="alice", session_id="s-1")
        bind(turn_id="t-1")
        logger.warning("turn %s is slow", "t-1", extra={"fields": {"duration_ms": 12.5}})
    logger.info("after the request")
    outside, inside, after = (orjson.loads(line) for line in lines.lines)
    assert set(outside) == {"time", "level", "logger", "message"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", outside["time"])
    assert inside == {
        "time": inside["time"],
        "level": "WARNING",
        "logger": "copilot.test-logs",
        "message": "turn t-1 is slow",
        "request_id": "req-1",
        "user_id": "alice",
        "session_id": "s-1",
        "turn_id": "t-1",
        "fields": {"duration_ms": 12.5},
    }
    assert set(after) == {"time", "level", "logger", "message"}  # the request's ids end with it


def test_a_text_line_ends_with_the_ids(logger: logging.Logger) -> None:
    lines = _Lines(TextFormatter())
    logger.addHandler(lines)
    with request_scope("req-2"):
        bind(turn_id="t-2")
        logger.info("hello", extra={"fields": {"outcome": "completed"}})
    assert lines.lines[0].endswith("INFO copilot.test-logs: hello [outcome=completed request_id=req-2 turn_id=t-2]")


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_credentials_are_masked_in_both_formats(logger: logging.Logger, formatter: logging.Formatter) -> None:
    lines = _Lines(formatter)
    logger.addHandler(lines)
    jwt = make_token("alice")
    logger.info("GET /ws?token=%s", jwt, extra={"fields": {"header": f"Bearer {jwt}"}})
    try:
        raise ValueError(f"bad token {jwt}")
    except ValueError:
        logger.exception("failed with Authorization: Bearer %s", jwt)
    text = "\n".join(lines.lines)
    assert REDACTED in text
    for part in jwt.split("."):
        assert part not in text
    if isinstance(formatter, JsonFormatter):
        failed = orjson.loads(lines.lines[1])
        assert "ValueError: bad token" in failed["exception"]


# --- copilot serve ------------------------------------------------------------------------------------------------


@pytest.fixture
def production_serve(migrated_database: str, mock_llm: MockLLMServer, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`copilot serve` in production mode (JSON logs by default), its output in a file."""
    log_path = tmp_path / "serve.log"
    env = serve_env(mock_llm, COPILOT_ENVIRONMENT="production", COPILOT_LLM_RETRY_BASE_SECONDS="0.01")
    with copilot_serve(env, log_path) as port:
        yield port, log_path


async def _lines(log_path: Path, until: str, seconds: float = 10) -> list[dict[str, Any]]:
    """Every line of the log parsed as JSON, once a line holds `until`."""
    deadline = time.monotonic() + seconds
    while True:
        text = await asyncio.to_thread(log_path.read_text)
        if until in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
async def test_copilot_serve_in_production_logs_json_lines_that_follow_a_request_into_its_turn(
    production_serve: tuple[int, Path],
) -> None:
    port, log_path = production_serve
    await wait_until_ready(f"http://127.0.0.1:{port}", log_path)
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    secret_words = "purple elephant umbrella"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=headers)
        generated = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)  # none was sent: one is made up and returned
        sid = r.json()["id"]
        message = f"[[mock:server_error times=1 key=logs status=503]] {secret_words}"
        response, body = await read_stream(
            client,
            "POST",
            f"/api/chat/sessions/{sid}/stream",
            json={"message": message},
            headers={**headers, "X-Request-ID": "req-from-the-edge-7"},
        )
        assert response.headers["x-request-id"] == "req-from-the-edge-7"
        assert b"[DONE]" in body
        bad = await client.get("/health/live", headers={"X-Request-ID": "no spaces allowed"})
        assert bad.headers["x-request-id"] != "no spaces allowed"  # not a plain token: replaced
    lines = await _lines(log_path, "turn ended")
    for line in lines:  # every line of the process, uvicorn's included, is one JSON object
        assert {"time", "level", "logger", "message"} <= set(line), line
    ours = [line for line in lines if line.get("request_id") == "req-from-the-edge-7"]
    by_logger = {line["logger"]: line for line in ours}
    started = next(line for line in ours if line["message"] == "turn started")
    ended = next(line for line in ours if line["message"].startswith("turn ended"))
    turn_id = started["turn_id"]
    for line in (started, ended, by_logger["copilot.llm"]):
        assert line["turn_id"] == turn_id and line["session_id"] == sid and line["user_id"] == "alice", line
    # the runner's first line, before the turn's ids are bound, still has the request's
    assert by_logger["copilot.runner"]["session_id"] == sid and by_logger["copilot.runner"]["user_id"] == "alice"
    assert "retry 1" in by_logger["copilot.llm"]["message"]  # logged by the model client inside the turn's task
    assert ended["fields"]["outcome"] == "completed" and ended["fields"]["model_calls"] == 1
    assert ended["fields"]["prompt_tokens"] > 0 and ended["fields"]["time_to_first_token_ms"] > 0
    access = [line for line in ours if line["logger"] == "uvicorn.access"]
    assert access and f"/api/chat/sessions/{sid}/stream" in access[0]["message"]
    assert access[0]["user_id"] == "alice" and access[0]["session_id"] == sid
    assert secret_words not in await asyncio.to_thread(
        log_path.read_text
    )  # no message content without COPILOT_LOG_CONTENT


async def test_log_content_adds_the_message_and_the_reply(chat_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    from tests.api.test_chat_stream import new_session, send, wait_idle
    from tests.conftest import LiveServer

    caplog.set_level(logging.INFO, logger="copilot.turn")
    settings = chat_settings.model_copy(update={"log_content": True})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        await send(client, sid, '[[mock:text content="Hello there"]] say hello')
        await wait_idle(client, sid)
        await asyncio.sleep(0.1)
    records = [r for r in caplog.records if r.name == "copilot.turn"]
    started = next(r for r in records if r.getMessage() == "turn started")
    ended = next(r for r in records if r.getMessage().startswith("turn ended"))
    assert "say hello" in started.fields["message"]  # type: ignore[attr-defined]
    assert ended.fields["reply"] == "Hello there"  # type: ignore[attr-defined]
