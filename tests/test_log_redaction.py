"""No credential reaches a log line: the redaction rules, and the log output of live servers.

The live tests run `copilot serve` in a subprocess (its own logging set-up, as in production) and uvicorn in
process with its default logging config, connect WebSockets with `?token=` and read every line that was logged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.app import create_app
from backend.config import Settings
from backend.devtools.fallbacks import dev_fallbacks
from backend.devtools.mock_llm import MockLLMServer
from backend.log_redaction import REDACTED, RedactSecrets, install_redaction, redact
from tests.conftest import make_token, serve_env
from tests.helpers import InProcessServer, copilot_serve, wait_until_ready

# --- the rules ------------------------------------------------------------------------------------------------


def test_query_tokens_are_masked_and_other_parameters_kept() -> None:
    jwt = make_token("alice")
    line = f'127.0.0.1:5555 - "WebSocket /api/chat/sessions/1/ws?after=3&token={jwt}&x=1" [accepted]'
    assert (
        redact(line) == f'127.0.0.1:5555 - "WebSocket /api/chat/sessions/1/ws?after=3&token={REDACTED}&x=1" [accepted]'
    )
    assert redact("GET /cb?access_token=abc.def&id_token=zzz HTTP/1.1") == (
        f"GET /cb?access_token={REDACTED}&id_token={REDACTED} HTTP/1.1"
    )
    assert redact("max_tokens=50 prompt_tokens=3") == "max_tokens=50 prompt_tokens=3"


def test_authorization_values_bearer_credentials_and_bare_jwts_are_masked() -> None:
    jwt = make_token("alice")
    for text in (
        f"Authorization: Bearer {jwt}",
        f"{{'authorization': 'Bearer {jwt}', 'host': 'x'}}",
        f'{{"Authorization": "{jwt}"}}',
        f"authorization=Basic {jwt}",
        f"calling with bearer {jwt} now",
        f"token rejected: {jwt}",
    ):
        cleaned = redact(text)
        assert jwt not in cleaned and REDACTED in cleaned, (text, cleaned)
        for part in jwt.split("."):
            assert part not in cleaned
    assert redact("'host': 'x'") == "'host': 'x'"


def test_the_filter_keeps_the_record_shape_uvicorn_formats() -> None:
    # uvicorn's access formatter reads `args` as (client, method, path, http version, status code).
    jwt = make_token("alice")
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", f"/x?token={jwt}", "1.1", 200), None,
    )  # fmt: skip
    assert RedactSecrets().filter(record) is True
    assert record.args == ("127.0.0.1:1", "GET", f"/x?token={REDACTED}", "1.1", 200)
    assert record.getMessage() == f'127.0.0.1:1 - "GET /x?token={REDACTED} HTTP/1.1" 200'


def test_a_placeholder_after_token_stays_in_the_template() -> None:
    # `log.info("GET /ws?token=%s", jwt)`: masking the template's `%s` left an argument with nowhere to go, and the
    # line was lost to a formatting error.
    jwt = make_token("alice")
    for template, args, expected in (
        ("GET /ws?token=%s&after=%d", (jwt, 3), f"GET /ws?token={REDACTED}&after=3"),
        ("sent Authorization: Bearer %s to %s", (jwt, "x"), f"sent Authorization: {REDACTED} to x"),
        ("with bearer %(token)s", {"token": "opaque-value"}, f"with bearer {REDACTED}"),
    ):
        record = logging.LogRecord("copilot", logging.INFO, __file__, 1, template, (args,), None)
        record.args = args  # LogRecord unwraps a single mapping itself; set what a logger call leaves
        assert RedactSecrets().filter(record) is True
        assert record.getMessage() == expected


def test_tracebacks_are_masked_too() -> None:
    jwt = make_token("alice")
    try:
        raise ValueError(f"bad token {jwt}")
    except ValueError:
        record = logging.LogRecord("copilot", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactSecrets().filter(record)
    text = logging.Formatter().format(record)
    assert jwt not in text and REDACTED in text


# --- live servers -----------------------------------------------------------------------------------------------


async def _exercise(port: int, session_id: str) -> list[str]:
    """WebSockets and a request that carry tokens in their URL; returns every token used."""
    good, expired, foreign = make_token("alice"), make_token("alice", ttl=-60), make_token("alice", secret="x" * 40)
    base = f"ws://127.0.0.1:{port}/api/chat/sessions/{session_id}/ws"
    async with connect(f"{base}?token={good}", proxy=None, open_timeout=5) as ws:
        await ws.send('{"type": "ping"}')
        assert "pong" in str(await asyncio.wait_for(ws.recv(), 10))
    for refused in (expired, foreign):
        async with connect(f"{base}?token={refused}", proxy=None, open_timeout=5) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
    in_query = make_token("alice")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        r = await client.get(f"/api/chat/sessions?token={in_query}", headers={"Authorization": f"Bearer {in_query}"})
        assert r.status_code == 200
    return [good, expired, foreign, in_query]


def _assert_no_token(log: str, tokens: list[str]) -> None:
    assert "WebSocket /api/chat/sessions/" in log, log  # the lines that carried them were written
    assert f"token={REDACTED}" in log, log
    for token in tokens:
        for part in token.split("."):
            assert part not in log, f"token part {part[:12]}... in the log"


@pytest.fixture
def serve_process(migrated_database: str, mock_llm: MockLLMServer, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`copilot serve` on a free port (INFO logs, production auth, the mock model); its output goes to a file."""
    log_path = tmp_path / "serve.log"
    with copilot_serve(serve_env(mock_llm), log_path) as port:
        yield port, log_path


@pytest.mark.slow
async def test_copilot_serve_logs_no_token(serve_process: tuple[int, Path]) -> None:
    port, log_path = serve_process
    await wait_until_ready(f"http://127.0.0.1:{port}", log_path)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        token = make_token("alice")
        r = await client.post("/api/chat/sessions", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201
    tokens = [token, *await _exercise(port, r.json()["id"])]
    await asyncio.sleep(0.5)  # let the last lines reach the file
    _assert_no_token(await asyncio.to_thread(log_path.read_text), tokens)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def pristine_uvicorn_loggers() -> Iterator[None]:
    """uvicorn's loggers without any filter an earlier test of this process installed."""

    def strip() -> None:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
            logger = logging.getLogger(name)
            for target in (logger, *logger.handlers):
                for f in [f for f in target.filters if isinstance(f, RedactSecrets)]:
                    target.removeFilter(f)

    strip()
    yield
    strip()
    install_redaction()  # leave the process as the app would


@pytest.fixture
async def uvicorn_in_process(settings: Settings, pristine_uvicorn_loggers: None) -> AsyncIterator[int]:
    """The app under uvicorn's own default logging config at INFO, as `uvicorn --factory` would run it."""
    app = create_app(settings, dev_fallbacks())
    async with InProcessServer(app, log_level="info", access_log=True, lifespan="auto") as server:
        yield server.port


async def test_the_app_masks_tokens_in_uvicorn_logs_whoever_configured_logging(uvicorn_in_process: int) -> None:
    port = uvicorn_in_process
    capture = _Capture()
    capture.setFormatter(logging.Formatter("%(name)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            token = make_token("alice")
            r = await client.post("/api/chat/sessions", json={}, headers={"Authorization": f"Bearer {token}"})
        tokens = [token, *await _exercise(port, r.json()["id"])]
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
    _assert_no_token("\n".join(capture.lines), tokens)
