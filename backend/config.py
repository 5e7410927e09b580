"""The service's settings: one typed object, read from the environment and `.env`, validated at startup.

Nothing else in the package reads `os.environ`; the app factory takes a `Settings` and passes it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of copilot-chat. Environment variables are `COPILOT_<FIELD>` unless an alias is listed."""

    model_config = SettingsConfigDict(
        env_prefix="COPILOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    environment: Literal["development", "production"] = "development"
    """`production` refuses the development auth mode and a missing JWT key."""

    host: str = "127.0.0.1"
    """Interface `copilot serve` binds to."""

    port: int = Field(default=8000, ge=1, le=65535)
    """Port `copilot serve` listens on."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""

    # --- storage -------------------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "COPILOT_DATABASE_URL")
    )
    """Postgres DSN (`postgresql://user@host:5432/db`). Unset: an embedded PostgreSQL under `data_dir`."""

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "COPILOT_REDIS_URL"))
    """Redis URL (`redis://host:6379/0`). Unset: an embedded Redis under `data_dir`."""

    redis_cluster: bool = False
    """Treat `redis_url` as a Redis Cluster node (keys are hash-tagged per session)."""

    data_dir: Path = Path(".copilot-data")
    """Where the embedded PostgreSQL and Redis keep their data (only used when the URLs are unset)."""

    db_pool_min_size: int = Field(default=2, ge=1)
    """Connections the asyncpg pool keeps open."""

    db_pool_max_size: int = Field(default=20, ge=1)
    """Upper bound of the asyncpg pool."""

    migrate_on_startup: bool = True
    """Apply pending SQL migrations at startup (under an advisory lock, so N pods may start at once)."""

    session_cache_ttl_seconds: int = Field(default=3600, ge=1)
    """How long a session's cached messages live in Redis after their last write or fill."""

    # --- auth ----------------------------------------------------------------------------------------
    jwt_secret: SecretStr | None = None
    """HS256 secret that signs bearer tokens. One of `jwt_secret` / `jwks_url` is needed unless `dev_auth`."""

    jwks_url: str | None = None
    """JWKS endpoint of the identity provider (RS256/ES256 tokens)."""

    jwt_audience: str | None = None
    """Expected `aud` claim, checked when set."""

    jwt_issuer: str | None = None
    """Expected `iss` claim, checked when set."""

    dev_auth: bool = False
    """Development auth: requests without a token act as `dev_user_id`. Off by default; refused in production."""

    dev_user_id: str = "dev-user"
    """The user of development auth."""

    admin_user_ids: list[str] = Field(default_factory=list)
    """Users (JWT `sub`) allowed on admin endpoints, besides tokens whose `roles` claim holds `admin`."""

    # --- model --------------------------------------------------------------------------------------
    llm_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "COPILOT_LLM_BASE_URL")
    )
    """OpenAI-compatible endpoint (OpenAI, OpenRouter, vLLM, ...). Unset with no API key: the built-in demo model."""

    llm_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "COPILOT_LLM_API_KEY")
    )
    """API key of the model provider."""

    model: str = "gpt-4o-mini"
    """Chat model used for turns (the demo model ignores it)."""

    title_model: str | None = None
    """Model for session titles; defaults to `model`."""

    llm_max_retries: int = Field(default=3, ge=0, le=10)
    """Retries of a model call that failed before its first chunk (rate limit, 5xx, overloaded, connection)."""

    llm_retry_base_seconds: float = Field(default=0.5, gt=0)
    """First retry delay; doubled each retry (with jitter), capped by `llm_retry_max_seconds`."""

    llm_retry_max_seconds: float = Field(default=8.0, gt=0)
    """Longest delay between two retries."""

    llm_idle_timeout_seconds: float = Field(default=60.0, gt=0)
    """A model stream that sends nothing for this long ends the step with an error."""

    turn_max_seconds: float = Field(default=600.0, gt=0)
    """Longest a whole turn (all its steps and tools) may run."""

    max_tool_rounds: int = Field(default=10, ge=1)
    """Model calls per turn; a model still calling tools after this many ends with an error."""

    invalid_tool_json_retries: int = Field(default=1, ge=0, le=5)
    """Retries of a step whose tool-call arguments were not valid JSON."""

    tools: list[str] = Field(default_factory=list)
    """Extra tool registries as a JSON list of `package.module:attribute` (a ToolRegistry or a function returning
    one), e.g. `["acme.copilot_tools:registry"]`."""

    heartbeat_seconds: float = Field(default=15.0, gt=0)
    """An SSE comment is sent after this long without any other frame, so proxies keep the stream open."""

    # --- turns and their streams --------------------------------------------------------------------
    turn_stream_ttl_seconds: int = Field(default=3600, ge=60)
    """How long a turn's stream stays replayable after its last chunk (reconnect window)."""

    turn_lease_seconds: float = Field(default=30.0, ge=1)
    """A running turn's pod renews its lease; a turn whose lease lapsed this long is closed as interrupted by any
    pod (detected within this plus a third of it)."""

    double_texting: Literal["reject", "interrupt", "enqueue"] = "reject"
    """A message while a turn runs: `reject` (409 with the active task id), `interrupt` (stop it, then start),
    `enqueue` (start once it ends)."""

    publish_window_ms: float = Field(default=10.0, ge=0, le=1000)
    """Chunks produced within this window are written to Redis in one round trip."""

    # --- API limits ----------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """Requests with a larger body are refused with 413 before anything is parsed or written."""

    max_message_chars: int = Field(default=100_000, ge=1)
    """Longest user message accepted."""

    @field_validator(
        "database_url",
        "redis_url",
        "llm_base_url",
        "llm_api_key",
        "jwt_secret",
        "jwks_url",
        "title_model",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `docker compose` passes `${VAR:-}` as an empty string; that means "not configured", not "".
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.environment == "production":
            if self.dev_auth:
                raise ValueError("COPILOT_DEV_AUTH must be off when COPILOT_ENVIRONMENT=production")
            if self.jwt_secret is None and self.jwks_url is None:
                raise ValueError("production needs COPILOT_JWT_SECRET or COPILOT_JWKS_URL")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("COPILOT_JWT_SECRET must be at least 32 characters")
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("COPILOT_DB_POOL_MIN_SIZE exceeds COPILOT_DB_POOL_MAX_SIZE")
        return self


def settings_table() -> str:
    """The configuration table of the README, generated from the fields above (a test keeps them in sync)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = list(alias.choices) if isinstance(alias, AliasChoices) else [f"COPILOT_{name.upper()}"]
        variable = " / ".join(f"`{n}`" for n in names)
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else f"`{default}`" if default != [] else "empty"
        rows.append(f"| {variable} | {shown} | {(info.description or '').strip()} |")
    return "\n".join(rows)
