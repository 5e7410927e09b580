"""Production refuses to start half-configured; elsewhere a missing key is a loud warning, not a silent 401.

The refusals are checked on `Settings`, on the app's startup (settings copied without validation, as tests and
embedders build them) and on a `copilot serve` subprocess; the warnings on a live server's log and readiness body.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from backend.app import create_app
from backend.config import Settings, startup_warnings
from backend.errors import ConfigurationError
from tests.conftest import JWT_SECRET, LiveServer
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def production(**kwargs: object) -> Settings:
    return Settings(environment="production", _env_file=None, **kwargs)  # type: ignore[call-arg, arg-type]


def test_production_needs_a_model() -> None:
    with pytest.raises(ValidationError, match="OPENAI_API_KEY or OPENAI_BASE_URL"):
        production(jwt_secret=JWT_SECRET)
    assert production(jwt_secret=JWT_SECRET, llm_api_key="sk-test").environment == "production"
    assert production(jwks_url="https://idp.example/jwks", llm_base_url="http://vllm:8000/v1").llm_api_key is None


def test_production_names_every_missing_piece_at_once() -> None:
    with pytest.raises(ValidationError) as refused:
        production()
    message = str(refused.value)
    assert "COPILOT_JWT_SECRET or COPILOT_JWKS_URL" in message
    assert "OPENAI_API_KEY or OPENAI_BASE_URL" in message


async def test_the_app_refuses_to_start_the_demo_model_in_production(settings: Settings) -> None:
    # model_copy skips validation: the runtime checks again instead of starting the demo model.
    unchecked = settings.model_copy(update={"environment": "production", "llm_api_key": None, "llm_base_url": None})
    app = create_app(unchecked)
    with pytest.raises(ConfigurationError, match="demo model"):
        async with app.router.lifespan_context(app):
            pass


def _serve(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        # Closed ports: a server that failed to refuse stops at once instead of starting embedded stores.
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", "serve", *args],
        cwd=tmp_path,  # no stray .env is read
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"OPENAI_API_KEY": "sk-test"}, (), "COPILOT_JWT_SECRET or COPILOT_JWKS_URL"),
        ({"COPILOT_JWT_SECRET": JWT_SECRET}, (), "OPENAI_API_KEY or OPENAI_BASE_URL"),
        ({"COPILOT_JWT_SECRET": JWT_SECRET, "OPENAI_API_KEY": "sk-test"}, ("--dev",), "COPILOT_DEV_AUTH must be off"),
    ],
    ids=["no-jwt-key", "no-model", "dev-auth"],
)
def test_copilot_serve_in_production_refuses_to_start_with_a_clear_message(
    env: dict[str, str], args: tuple[str, ...], expected: str, tmp_path: Path
) -> None:
    done = _serve({"COPILOT_ENVIRONMENT": "production", **env}, tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "refusing to start" in done.stderr
    assert "Traceback" not in done.stderr  # a sentence for the operator, not a stack


def test_warnings_name_what_a_development_start_lacks() -> None:
    bare = Settings(_env_file=None)  # type: ignore[call-arg]
    warnings = startup_warnings(bare)
    assert len(warnings) == 2
    assert any("401" in w and "COPILOT_JWT_SECRET" in w for w in warnings)
    assert any("demo model" in w for w in warnings)
    assert startup_warnings(bare.model_copy(update={"dev_auth": True, "llm_api_key": SecretStr("k")})) == []


async def test_a_service_missing_its_keys_warns_at_startup_and_in_readiness(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bare = settings.model_copy(update={"jwt_secret": None, "llm_api_key": None, "llm_base_url": None})
    with caplog.at_level(logging.WARNING, logger="copilot"):
        async with LiveServer(bare) as live, httpx.AsyncClient(base_url=live.url) as client:
            ready = await client.get("/health/ready")
            refused = await client.get("/api/chat/sessions")
    assert ready.status_code == 200  # still ready: Postgres and Redis answer
    warnings = ready.json()["warnings"]
    assert any("401" in w for w in warnings) and any("demo model" in w for w in warnings)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(w in logged for w in warnings), logged
    assert refused.status_code == 401


async def test_a_configured_service_reports_no_warnings(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat  # a JWT key and a model (the mock)
    body = (await client.get("/health/ready")).json()
    assert (body["status"], body["warnings"]) == ("ok", [])


async def test_without_fallbacks_unset_urls_and_model_are_refused(settings: Settings) -> None:
    """Only `copilot serve` hands the runtime the embedded servers and the demo model (`runtime.Fallbacks`): an app
    built without them refuses to start instead of reaching for dev tools."""
    no_model = settings.model_copy(update={"llm_api_key": None, "llm_base_url": None})
    app = create_app(no_model)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        async with app.router.lifespan_context(app):
            pass
    no_database = settings.model_copy(update={"database_url": None})
    app = create_app(no_database)
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        async with app.router.lifespan_context(app):
            pass
