"""Shared fixtures: a real Postgres database and Redis DB of the tests' own, an app served over real HTTP."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from typing import Any

import asyncpg
import httpx
import jwt
import orjson
import pytest
from fastapi import FastAPI
from pydantic import AliasChoices, SecretStr
from redis.asyncio import Redis

from backend.app import create_app
from backend.config import Settings
from backend.devtools.fallbacks import dev_fallbacks
from backend.devtools.mock_llm import MockLLMServer
from backend.store.migrate import upgrade_dsn
from backend.store.postgres import create_pool
from tests.helpers import InProcessServer
from tests.raw_http import RecordingModel, raw_server

# Keys and endpoints in a developer's shell (a real OPENAI_API_KEY, LANGFUSE_*, POSTHOG_*, COPILOT_*, OTEL_*, ...)
# must not reach the tests' settings, the SDKs that read them on their own, or the servers tests spawn: they would send
# test traffic to a real model or analytics project and make results depend on the shell. The tests' own switches stay.
_LEAKING_PREFIXES = ("OPENAI_", "LANGFUSE_", "POSTHOG_", "COPILOT_", "OTEL_", "PROMETHEUS_")
_TEST_SWITCHES = ("COPILOT_TEST_DB", "COPILOT_UPDATE_")


def _settings_variables() -> set[str]:
    """Every variable `Settings` reads besides `COPILOT_*`: its aliases (DATABASE_URL, REDIS_URL, OPENAI_API_KEY...)."""
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
    return names


def scrub_environment(environ: MutableMapping[str, str]) -> list[str]:
    """Remove from `environ` what would configure the service or its SDKs; the names removed."""
    leaking = _settings_variables()
    removed = [
        name
        for name in environ
        if (name.startswith(_LEAKING_PREFIXES) or name in leaking) and not name.startswith(_TEST_SWITCHES)
    ]
    for name in removed:
        del environ[name]
    return removed


scrub_environment(os.environ)

ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
# A database of this run's own (two runs on one server must not drop each other's); COPILOT_TEST_DB pins it.
TEST_DB = os.environ.get("COPILOT_TEST_DB") or f"copilot_test_{os.getpid()}"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"


def _dsn_for(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


DATABASE_URL = _dsn_for(TEST_DB)


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def migrated_database() -> Iterator[str]:
    """A database of the tests' own, created and migrated once per run and dropped after it."""

    async def prepare() -> None:
        await _admin(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        await _admin(f"CREATE DATABASE {TEST_DB}")
        await upgrade_dsn(DATABASE_URL)

    asyncio.run(prepare())
    yield DATABASE_URL
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)"))


@pytest.fixture
async def db(migrated_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, emptied before the test."""
    conn = await asyncpg.connect(migrated_database)
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads
    )
    await conn.execute("TRUNCATE chat_sessions CASCADE")
    yield conn
    await conn.close()


@pytest.fixture
async def pool(db: asyncpg.Connection, migrated_database: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool of the service's own kind on the emptied test database."""
    pool = await create_pool(migrated_database, min_size=1, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def settings(db: asyncpg.Connection, redis: Redis) -> Settings:
    return Settings(
        database_url=DATABASE_URL,
        redis_url=REDIS_URL,
        jwt_secret=JWT_SECRET,
        db_pool_min_size=1,
        db_pool_max_size=10,
        # Per-user limits are off here: tests poll and run turns far faster than a person; tests of the limits
        # (tests/api/test_rate_limits.py) turn them on.
        rate_limit_requests_per_minute=0,
        rate_limit_concurrent_turns=0,
        rate_limit_tokens_per_day=0,
        _env_file=None,  # type: ignore[call-arg]
    )


def serve_env(llm: MockLLMServer, **extra: str) -> dict[str, str]:
    """The environment of a `copilot serve` process on the test database and Redis, answered by the mock model."""
    return {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "COPILOT_JWT_SECRET": JWT_SECRET,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test",
        "COPILOT_MODEL": "mock-model",
        "COPILOT_LOG_LEVEL": "INFO",
        "COPILOT_DB_POOL_MIN_SIZE": "1",
        **extra,
    }


def make_token(user_id: str, *, secret: str = JWT_SECRET, ttl: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl, **claims}, secret, algorithm="HS256")


def auth(user_id: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}


class LiveServer(InProcessServer):
    """The app built from `settings` (with the dev tools as fallbacks), served by uvicorn on a free loopback port,
    in the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(create_app(settings, dev_fallbacks()))

    app: FastAPI


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    async with LiveServer(settings) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def as_user() -> Callable[[str], dict[str, str]]:
    return auth


@pytest.fixture
async def mock_llm() -> AsyncIterator[MockLLMServer]:
    """The project's OpenAI-compatible mock model, over real HTTP on loopback."""
    async with MockLLMServer() as server:
        yield server


@pytest.fixture
def chat_settings(settings: Settings, mock_llm: MockLLMServer) -> Settings:
    """Settings of a service whose model is the mock, with fast retries and timeouts."""
    return settings.model_copy(
        update={
            "llm_base_url": mock_llm.base_url,
            "llm_api_key": SecretStr("test"),
            "model": "mock-model",
            "llm_retry_base_seconds": 0.01,
            "llm_retry_max_seconds": 0.05,
            "llm_idle_timeout_seconds": 1.0,
            "publish_window_ms": 2.0,
        }
    )


@pytest.fixture
async def chat(chat_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, LiveServer]]:
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


@pytest.fixture
async def recording_model() -> AsyncIterator[RecordingModel]:
    """A raw model server that records what it was asked and which calls were hung up (`tests/raw_http.py`)."""
    answering = RecordingModel()
    async with raw_server(answering) as seen:
        answering.base_url = f"{seen[0]}/v1"
        yield answering
