"""`docker-compose.yml` (the README's "run it for real") starts a production service or none at all.

The file is parsed with PyYAML and its `${...}` values are resolved the way Compose does (`:-` default, `:?`
required); the app's resolved environment is then fed to `Settings`, so the service's own refusals are checked on
exactly what compose would pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from backend.config import Settings, settings_table
from tests.conftest import JWT_SECRET

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")
REQUIRED = {"POSTGRES_PASSWORD": "pg-secret", "OPENAI_API_KEY": "sk-test"}


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of the forms this file uses: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`."""

    def one(match: re.Match[str]) -> str:
        if current := env.get(match["name"], ""):
            return current
        if match["op"] == "?":
            raise MissingVariable(f"{match['name']}: {match['arg']}")
        return match["arg"] if match["op"] == "-" else ""

    return _VARIABLE.sub(one, value)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def app_environment(env: Mapping[str, str]) -> dict[str, str]:
    raw = compose()["services"]["app"]["environment"]
    return {name: interpolate(str(value), env) for name, value in raw.items()}


def settings_from(environment: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from exactly `environment`: the container sees nothing else of this machine's environment."""
    for name in list(os.environ):
        if name.startswith(("COPILOT_", "OPENAI_", "LANGFUSE_", "POSTHOG_")) or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_every_variable_of_the_file_is_understood_by_this_test() -> None:
    assert "${" not in _VARIABLE.sub("", COMPOSE.read_text())


def test_production_and_no_development_auth_by_default() -> None:
    environment = app_environment(REQUIRED)
    assert environment["COPILOT_ENVIRONMENT"] == "production"
    assert environment["COPILOT_DEV_AUTH"] == "false"
    assert app_environment({**REQUIRED, "COPILOT_ENVIRONMENT": "development"})["COPILOT_ENVIRONMENT"] == "development"


def test_only_the_app_is_published_and_on_loopback_by_default() -> None:
    services = compose()["services"]
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]
    ports = [interpolate(p, {}) for p in services["app"]["ports"]]
    assert ports == ["127.0.0.1:8000:8000"]
    exposed = [interpolate(p, {"COPILOT_PUBLISH_ADDRESS": "0.0.0.0"}) for p in services["app"]["ports"]]
    assert exposed == ["0.0.0.0:8000:8000"]  # an explicit choice, documented in the README


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_start_without_a_required_variable(missing: str) -> None:
    env = {name: value for name, value in REQUIRED.items() if name != missing}
    with pytest.raises(MissingVariable, match=missing):
        app_environment(env)


def test_no_hard_coded_credentials() -> None:
    text = COMPOSE.read_text()
    assert "copilot:copilot@" not in text
    assert compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_the_service_refuses_what_compose_passes_without_a_jwt_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="COPILOT_JWT_SECRET or COPILOT_JWKS_URL"):
        settings_from(app_environment(REQUIRED), monkeypatch)


def test_the_service_refuses_development_auth_switched_on_in_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = app_environment({**REQUIRED, "COPILOT_JWT_SECRET": JWT_SECRET, "COPILOT_DEV_AUTH": "true"})
    with pytest.raises(ValidationError, match="DEV_AUTH must be off"):
        settings_from(environment, monkeypatch)


@pytest.mark.parametrize(
    "auth", [{"COPILOT_JWT_SECRET": JWT_SECRET}, {"COPILOT_JWKS_URL": "https://idp.example/.well-known/jwks.json"}]
)
def test_a_complete_environment_runs_in_production(auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(app_environment({**REQUIRED, **auth}), monkeypatch)
    assert (settings.environment, settings.dev_auth, settings.uses_demo_model) == ("production", False, False)
    assert settings.database_url == "postgresql://copilot:pg-secret@postgres:5432/copilot"
    assert settings.webhook_secret is None and settings.llm_base_url is None  # empty means unset


def setting_names() -> set[str]:
    """Every environment variable the settings read, from the README's configuration table (`settings_table`)."""
    names: set[str] = set()
    for row in settings_table().splitlines()[2:]:
        if row.startswith("|"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1]))
    return names


def test_the_app_gets_only_variables_the_settings_read_each_under_its_own_name() -> None:
    environment = compose()["services"]["app"]["environment"]
    known = setting_names()
    assert {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "COPILOT_JWT_SECRET"} <= known  # the table parses
    assert sorted(set(environment) - known) == []
    for name, value in environment.items():
        whole = _VARIABLE.fullmatch(str(value))
        if whole is not None:  # passed through from the shell: the same name on both sides, no typo in between
            assert whole["name"] == name, f"{name} is fed from ${{{whole['name']}}}"
    dockerfile_env = re.findall(r"\b(COPILOT_[A-Z_]+)=", (COMPOSE.parent / "Dockerfile").read_text())
    assert dockerfile_env and sorted(set(dockerfile_env) - known) == []


def test_every_service_restarts_unless_stopped() -> None:
    assert {name: service.get("restart") for name, service in compose()["services"].items()} == {
        "postgres": "unless-stopped",
        "redis": "unless-stopped",
        "app": "unless-stopped",
    }


def test_the_image_installs_dependencies_in_a_layer_before_the_code() -> None:
    lines = [line.strip() for line in (COMPOSE.parent / "Dockerfile").read_text().splitlines()]
    index = {line: i for i, line in reversed(list(enumerate(lines)))}
    copy_pyproject, copy_code = index["COPY pyproject.toml ./"], index["COPY backend ./backend"]
    install_deps = next(i for i, line in enumerate(lines) if "pip install --no-cache-dir -r" in line)
    install_app = next(i for i, line in enumerate(lines) if "pip install --no-cache-dir --no-deps ." in line)
    assert copy_pyproject < install_deps < copy_code < install_app
