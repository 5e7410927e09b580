"""The service's settings: one typed object, read from the environment and `.env`, validated at startup.

Nothing else in the package reads `os.environ`; the app factory takes a `Settings` and passes it down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.mcp_config import McpServer, check_session_server_settings, parse_mcp_servers

DEFAULT_MAX_CONCURRENT_TURNS = 100
"""`max_concurrent_turns` unless set, from the benchmark (docs/benchmarks.md, *Overload*): one worker offered 1,000
streams of 20 tokens/s keeps the 100 it admits at their pace (added p99 gap within 100 ms) while it refuses the
rest; capped at 200 it does not: the turns it lets in, and what it costs to refuse the others, need more than its
one core (it delivers at most ~3,500-3,900 tokens/s there)."""


class ModelPrice(BaseModel):
    """What a model costs, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    """Prompt tokens not served from the provider's cache."""
    output: float = Field(ge=0)
    """Completion tokens (reasoning tokens included: providers count them there)."""
    cached_input: float | None = Field(default=None, ge=0)
    """Prompt tokens served from the cache; unset: priced as `input`."""


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
    """`production` refuses to start with dev auth, no JWT key / JWKS URL or no model; elsewhere they are warnings."""

    host: str = "127.0.0.1"
    """Interface `copilot serve` binds to."""

    port: int = Field(default=8000, ge=1, le=65535)
    """Port `copilot serve` listens on."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""

    log_format: Literal["json", "text"] | None = None
    """Log lines as JSON objects or as text, each with the request, user, session and turn ids that apply (see
    docs/operations.md). Unset: `json` in production, `text` elsewhere."""

    log_content: bool = False
    """Also log message and reply text (the `turn started` / `turn ended` lines) and tool error text. Off: only ids,
    counts and timings."""

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

    db_statement_cache_size: int = Field(default=100, ge=0)
    """Prepared statements asyncpg keeps per connection. 0 behind PgBouncer in transaction (or statement) pooling
    mode before 1.21 or without its `max_prepared_statements`: a named statement prepared on one server connection is
    not there on the next."""

    startup_wait_seconds: float = Field(default=60.0, ge=0)
    """At startup, how long to wait for PostgreSQL to accept connections (retried with a warning each time, e.g. while
    Compose starts it); then the service exits with a message. 0: one attempt. Redis needs no wait: the service starts
    without it (readiness answers 503 until it answers)."""

    migrate_on_startup: bool = True
    """Apply pending SQL migrations at startup (under an advisory lock, so N pods may start at once)."""

    session_cache_ttl_seconds: int = Field(default=3600, ge=1)
    """How long a session's cached messages live in Redis after their last write or fill."""

    store_retry_seconds: float = Field(default=15.0, ge=0, le=600)
    """A step of a reply that Postgres does not take is retried (with backoff) this long within its turn; then it
    is kept in Redis and stored once Postgres answers (the turn ends after that step)."""

    reconcile_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    """How often each pod looks for replies kept in Redis during a Postgres outage and stores them."""

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

    admin_user_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Users (JWT `sub`) allowed on admin endpoints, besides tokens whose `roles` claim holds `admin`: comma-separated
    (`alice,bob`) or a JSON list (`["alice","bob"]`)."""

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

    llm_api: Literal["chat_completions", "responses"] = "chat_completions"
    """The API the model is spoken to in: `chat_completions` (`POST /chat/completions`) or `responses`
    (`POST /responses`, stateless: the whole input each call). docs/providers.md compares them."""

    responses_state: Literal["stateless", "server"] = "stateless"
    """With `llm_api=responses`: `server` lets the provider store each response (`store: true`) and sends a
    session's next call only its new input with `previous_response_id` (kept per session in Postgres), the whole
    input again when the provider no longer knows it; `stateless` sends the whole input each call (`store: false`)."""

    responses_reasoning_summary: Literal["off", "auto", "concise", "detailed"] = "off"
    """With `llm_api=responses`: ask a reasoning model for its reasoning summaries, streamed as reasoning parts
    (`off` sends no `reasoning` option, which models without reasoning refuse)."""

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
    """Tool rounds per turn (model calls whose tool calls ran; a step retried after a context overflow or invalid
    tool arguments does not count); a model still calling tools after this many ends with an error."""

    invalid_tool_json_retries: int = Field(default=1, ge=0, le=5)
    """Retries of a step whose tool-call arguments were not valid JSON."""

    tools: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Extra tool registries, each `package.module:attribute` (a ToolRegistry or a function returning one):
    comma-separated (`acme.copilot_tools:registry`) or a JSON list (`["acme.copilot_tools:registry"]`)."""

    tools_requiring_approval: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Tools (built-in, plug-in or MCP `<server>__<tool>`) whose every call waits for the user's approval before it
    runs, comma-separated or a JSON list; a plug-in can also say so itself (`requires_approval = True`)."""

    human_input_timeout_seconds: float = Field(default=86400.0, gt=0)
    """How long a tool call waits for a person (a frontend tool's output, an answer to `ask_user`, an approval);
    unanswered after this, it closes with an error the model sees in the next turn."""

    ai_sdk_version: Literal[5, 6, 7] = 6
    """The major version of the `ai` package the panel's `useChat` runs. 5 has no approval chunk: approval
    requests go out as a `data-tool-approval-request` part instead (answer them with the REST endpoint)."""

    mcp_servers: str | None = None
    """MCP servers whose tools the model may call, as JSON in the common `mcpServers` shape (docs/mcp.md):
    `{"mcpServers": {"search": {"url": "https://...", "bearer_token_env": "SEARCH_TOKEN"}}}`."""

    mcp_config: Path | None = None
    """A JSON file of MCP servers in the same shape; its servers join those of `COPILOT_MCP_SERVERS`."""

    mcp_tool_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest one MCP tool call may take (a server's `timeout_seconds` overrides it)."""

    mcp_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    """Longest a connection to an MCP server (start, handshake, tool list) may take."""

    mcp_startup_wait_seconds: float = Field(default=5.0, ge=0)
    """How long startup waits for the MCP servers' tool lists before serving; a server not connected by then
    joins in the background when it answers."""

    mcp_tools_ttl_seconds: float = Field(default=300.0, gt=0)
    """The tool list of an MCP server is fetched again after this long (and whenever the server says it changed)."""

    mcp_reconnect_max_seconds: float = Field(default=30.0, gt=0)
    """Longest wait between two attempts to reach an MCP server that is down (the wait doubles from 0.5 s)."""

    mcp_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts a session's own MCP servers may be on (`POST /api/chat/sessions/{id}/mcp-servers`), comma-separated:
    `mcp.example.com` exactly, `*.example.com` for its subdomains. Empty: users cannot add servers."""

    mcp_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Networks (CIDR, `10.20.0.0/16`) a session's MCP server may resolve to although they are loopback, private,
    link-local or otherwise not public; every other such address is refused (SSRF)."""

    mcp_headers_key: SecretStr | None = None
    """The Fernet key (`Fernet.generate_key()`, 44 characters) the headers of sessions' MCP servers are encrypted
    with in Postgres; needed when `COPILOT_MCP_ALLOWED_HOSTS` is set."""

    mcp_session_servers_max: int = Field(default=5, ge=1, le=50)
    """Most MCP servers one session may have."""

    mcp_session_idle_seconds: float = Field(default=300.0, gt=0)
    """A connection to a session's MCP server is closed after this long without a turn of the session on the pod."""

    heartbeat_seconds: float = Field(default=15.0, gt=0)
    """An SSE comment is sent after this long without any other frame, so proxies keep the stream open."""

    # --- context window ---------------------------------------------------------------------------
    context_window_tokens: int = Field(default=128_000, ge=1024)
    """Context window of the model, in tokens (see `model_context_windows` for per-model values)."""

    model_context_windows: dict[str, int] = Field(default_factory=dict)
    """Per-model context windows as JSON, e.g. `{"gpt-4o": 128000, "claude-sonnet-4": 200000}`."""

    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Prices per model as JSON, USD per million tokens, e.g.
    `{"gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached_input": 0.075}}`: a turn's `finish` chunk and the
    session usage report a cost for the models listed here (none for the others)."""

    reserved_output_tokens: int = Field(default=4096, ge=0)
    """Tokens of the window kept free for the reply."""

    context_safety_margin: float = Field(default=0.05, ge=0, lt=0.5)
    """Fraction of the input budget kept free for counting error."""

    compaction_soft_ratio: float = Field(default=0.6, gt=0, le=1)
    """Prompt above this fraction of the input budget: the summary is extended in the background after the turn."""

    compaction_hard_ratio: float = Field(default=0.85, gt=0, le=1)
    """Prompt above this fraction: the summary is extended before the model call (the UI sees a status part)."""

    compaction_target_ratio: float = Field(default=0.35, gt=0, lt=1)
    """After a compaction the live messages take at most this fraction of the input budget."""

    context_max_live_messages: int = Field(default=400, ge=0)
    """More live messages than this (however few tokens they hold) extend the summary in the background after the
    turn, down to half as many: building a prompt then costs the same at 5,000 messages as at 400. 0: no bound."""

    summary_model: str | None = None
    """Model that writes the rolling summaries; defaults to `model`."""

    summary_max_input_tokens: int = Field(default=16_000, ge=256)
    """Most tokens of conversation one summariser call reads (older turns are folded in several calls)."""

    summary_max_tokens: int = Field(default=1024, ge=64)
    """Longest summary."""

    summary_timeout_seconds: float = Field(default=30.0, gt=0)
    """A summariser call that takes longer fails; the turn then trims its prompt instead."""

    max_tool_output_tokens: int = Field(default=4000, ge=64)
    """Tool outputs longer than this are stored cut in the middle (head and tail kept, the cut marked)."""

    # --- long-running operations ------------------------------------------------------------------
    webhook_secret: SecretStr | None = None
    """Shared secret of the operation-completion webhook (HMAC-SHA256). Unset: the webhook answers 503."""

    webhook_tolerance_seconds: float = Field(default=300.0, gt=0)
    """Replay window: a webhook whose timestamp is further from now than this is refused. Delivery ids are remembered
    for twice this plus a minute; a repeat meanwhile is answered `duplicate` and enqueues nothing."""

    operation_lock_seconds: float = Field(default=60.0, ge=1)
    """Lease of a running operation's lock; renewed while the work runs, so a crashed pod frees it after this."""

    delegated_operation_timeout_seconds: float = Field(default=3600.0, ge=1)
    """How long an operation handed to an external service may take before it is failed."""

    completion_reclaim_idle_seconds: float = Field(default=60.0, ge=0.1)
    """A completion read but not acknowledged for this long (its consumer died) is taken over by another pod.
    Keep it above the worst-case handling time of one completion (a few seconds)."""

    completion_max_deliveries: int = Field(default=5, ge=1)
    """A completion that failed this many times is moved to the dead-letter stream."""

    completion_stream_max_len: int = Field(default=10_000, ge=100)
    """The completions stream keeps about this many newest entries (`XADD MAXLEN ~`; Redis may keep up to ~100
    more). Far above what ever waits: a completion pushed out before a pod handled it is lost and its operation
    fails at its deadline."""

    completion_dead_letter_max_len: int = Field(default=1_000, ge=10)
    """The dead-letter stream keeps about this many newest failed completions for inspection."""

    job_stream_max_len: int = Field(default=10_000, ge=100)
    """Each jobs stream (`copilot:jobs:<kind>`, read by external services) keeps about this many newest jobs. A job
    pushed out before a service read it is lost; its operation fails at its deadline."""

    # --- turns and their streams --------------------------------------------------------------------
    turn_stream_ttl_seconds: int = Field(default=3600, ge=60)
    """How long a turn's stream stays replayable after its last chunk (reconnect window). Turn streams are not
    trimmed by length (a replay starts at `start`); each expires whole after this long."""

    turn_lease_seconds: float = Field(default=30.0, ge=1)
    """A running turn's pod renews its lease; a turn whose lease lapsed is closed as interrupted by any pod, once
    seen lapsed for two thirds of this more (so within about twice this after its pod died)."""

    double_texting: Literal["reject", "interrupt", "enqueue"] = "reject"
    """A message while a turn runs: `reject` (409 with the active task id), `interrupt` (stop it, then start),
    `enqueue` (start once it ends)."""

    publish_window_ms: float = Field(default=250.0, ge=0, le=5000)
    """A turn's chunks go to followers on its own pod at once, and to its Redis Stream (followers on other pods,
    replays) at most this far behind: the pod writes the chunks of all its turns in one round trip per window (the
    markers `start`, `start-step` and `finish-step` go with the next chunk that shows something, or with the end)."""

    max_concurrent_turns: int = Field(default=DEFAULT_MAX_CONCURRENT_TURNS, ge=0)
    """Turns one process may run at once (continuations after long-running operations included). Past it a request
    that would start a new turn here gets 503 `overloaded` with `Retry-After` before anything is stored, so the load
    balancer or the client sends it again, to another pod or later; the running streams keep their pace. A resend
    of a running turn's message, reads, replays and cancels are never refused; readiness stays ready. Size it from
    load tests: the running turns at which time to first token or stream pace degrades. 0: no cap."""

    overloaded_retry_after_seconds: int = Field(default=1, ge=1, le=3600)
    """The `Retry-After` of an `overloaded` refusal."""

    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    """On SIGTERM `copilot serve` drains: readiness turns 503 and new turns are refused (503, `Retry-After`) at once,
    running turns get this long to finish, then are stopped and stored `[interrupted]`, and the process exits a few
    seconds later. Keep it below the orchestrator's kill deadline (Kubernetes: 30 s) minus about 5 s."""

    # --- prompts, tracing, analytics ---------------------------------------------------------------
    langfuse_public_key: str | None = Field(
        default=None, validation_alias=AliasChoices("LANGFUSE_PUBLIC_KEY", "COPILOT_LANGFUSE_PUBLIC_KEY")
    )
    """Langfuse project public key. With the secret key it turns on managed prompts and tracing."""

    langfuse_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LANGFUSE_SECRET_KEY", "COPILOT_LANGFUSE_SECRET_KEY")
    )
    """Langfuse project secret key."""

    langfuse_host: str | None = Field(
        default=None, validation_alias=AliasChoices("LANGFUSE_HOST", "LANGFUSE_BASE_URL", "COPILOT_LANGFUSE_HOST")
    )
    """Langfuse base URL (a cloud region or self-hosted). Unset: `https://cloud.langfuse.com`."""

    langfuse_prompt_name: str = "copilot-system"
    """Name of the system prompt in Langfuse prompt management (text or chat prompt)."""

    langfuse_prompt_label: str | None = None
    """Label of the prompt version to serve. Unset: `production` in production, `latest` elsewhere."""

    prompt_cache_ttl_seconds: float = Field(default=60, ge=1)
    """How often the prompt is refetched in the background; a newly published version is used within this long."""

    posthog_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("POSTHOG_API_KEY", "COPILOT_POSTHOG_API_KEY")
    )
    """PostHog project API key. Unset: no analytics events."""

    posthog_host: str | None = Field(
        default=None, validation_alias=AliasChoices("POSTHOG_HOST", "COPILOT_POSTHOG_HOST")
    )
    """PostHog host (a cloud region or self-hosted). Unset: the SDK's default, US cloud."""

    posthog_capture_content: bool = False
    """Also send message text and tool error text to PostHog. Off: only counts, timings and ids are sent."""

    # --- operations: metrics and OpenTelemetry traces ---------------------------------------------------
    metrics_enabled: bool = True
    """Prometheus metrics: counted in process and served at `GET /metrics` (or on `metrics_port`)."""

    metrics_token: SecretStr | None = None
    """Bearer token `GET /metrics` requires (`Authorization: Bearer <token>`). Unset: the endpoint is open; keep it
    off the public proxy then."""

    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve the metrics on this port of `host` instead of at `/metrics` of the API (no token there: bind it where
    only the scraper reaches). Single-process servers only."""

    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR")
    )
    """Several worker processes behind one port (gunicorn): an empty directory where each writes its metrics, so any
    worker's scrape adds all up. Must be in the process environment (prometheus_client reads it at import)."""

    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """OTLP/HTTP collector base URL (`http://collector:4318`; traces go to `/v1/traces` under it). Set (or the traces
    endpoint below): spans of requests, turns, model and tool calls, Redis and Postgres are exported. The SDK reads
    the other standard `OTEL_*` variables itself (service name, resource attributes, headers, sampler, batching)."""

    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    """Full OTLP/HTTP traces URL; wins over `otel_exporter_otlp_endpoint`."""

    otel_sdk_disabled: bool = Field(default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))
    """`true`: no spans are exported whatever the endpoints say."""

    # --- API limits ----------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """Requests with a larger body are refused with 413 before anything is parsed or written."""

    max_message_chars: int = Field(default=100_000, ge=1)
    """Longest user message accepted."""

    # --- per-user limits (shared by all pods through Redis) -----------------------------------------
    rate_limit_requests_per_minute: int = Field(default=120, ge=0)
    """API requests one user may make in any minute (a sliding window; health checks, the panel page and its assets
    are not counted, a WebSocket counts its opening and each `message`). Over it: 429 `rate_limited`. 0: no limit."""

    rate_limit_concurrent_turns: int = Field(default=3, ge=0)
    """Replies one user may have being generated at once, across all pods (a resend of the same message joins its
    turn and takes no second one; a turn of a pod that died stops counting after `turn_lease_seconds`). 0: no limit."""

    rate_limit_tokens_per_day: int = Field(default=1_000_000, ge=0)
    """Model tokens one user may spend per UTC day: prompt + completion as the provider reports them, titles and
    summaries included. Checked when a turn starts (a running turn is never cut off); over it, new messages get 429
    until midnight UTC. 0: no limit."""

    rate_limit_admins: bool = False
    """Apply the per-user limits to admins too. Off: admins (and the development-auth user, an admin) are exempt."""

    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """Largest request head (request line and headers), in bytes. `copilot serve` answers 431 and closes the
    connection as soon as a head passes it, without reading the rest; under another server the app answers 431."""

    @field_validator(
        "database_url",
        "redis_url",
        "llm_base_url",
        "llm_api_key",
        "jwt_secret",
        "jwks_url",
        "title_model",
        "summary_model",
        "webhook_secret",
        "langfuse_public_key",
        "langfuse_secret_key",
        "langfuse_host",
        "langfuse_prompt_label",
        "posthog_api_key",
        "posthog_host",
        "mcp_servers",
        "mcp_config",
        "mcp_headers_key",
        "log_format",
        "metrics_token",
        "metrics_port",
        "prometheus_multiproc_dir",
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_traces_endpoint",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `docker compose` passes `${VAR:-}` as an empty string; that means "not configured", not "".
        return None if value == "" else value

    @field_validator(
        "admin_user_ids",
        "tools",
        "tools_requiring_approval",
        "mcp_allowed_hosts",
        "mcp_allowed_networks",
        mode="before",
    )
    @classmethod
    def _list_from_text(cls, value: object) -> object:
        return _split_list(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.environment == "production" and (problems := _production_problems(self)):
            # Every gap at once, so an operator fixes the deployment in one go rather than one restart per variable.
            raise ValueError("; ".join(problems))
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("COPILOT_JWT_SECRET must be at least 32 characters")
        if not self.compaction_target_ratio < self.compaction_soft_ratio <= self.compaction_hard_ratio:
            raise ValueError("need COMPACTION_TARGET_RATIO < COMPACTION_SOFT_RATIO <= COMPACTION_HARD_RATIO")
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("COPILOT_DB_POOL_MIN_SIZE exceeds COPILOT_DB_POOL_MAX_SIZE")
        if self.responses_state == "server" and self.llm_api != "responses":
            raise ValueError("COPILOT_RESPONSES_STATE=server needs COPILOT_LLM_API=responses")
        self.mcp_server_specs  # noqa: B018 (a bad MCP configuration fails here, at startup)
        if self.mcp_allowed_hosts:
            check_session_server_settings(self.mcp_allowed_hosts, self.mcp_allowed_networks, self.mcp_headers_key)
        return self

    _mcp: tuple[object, dict[str, McpServer]] | None = PrivateAttr(default=None)

    @property
    def mcp_server_specs(self) -> dict[str, McpServer]:
        """The enabled MCP servers of `mcp_servers` and `mcp_config`, by name. Parsed once per value of the two
        (settings copied with `model_copy(update=...)` are not validated again, so the key is checked here)."""
        key = (self.mcp_servers, self.mcp_config)
        if self._mcp is None or self._mcp[0] != key:
            self._mcp = (key, _mcp_servers_of(self))
        return dict(self._mcp[1])

    @property
    def uses_demo_model(self) -> bool:
        """No model is configured: replies would come from the built-in demo model (development only)."""
        return self.llm_base_url is None and self.llm_api_key is None

    @property
    def resolved_log_format(self) -> Literal["json", "text"]:
        """`log_format`, else `json` in production and `text` elsewhere."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "text"

    @property
    def otlp_traces_endpoint(self) -> str | None:
        """Where spans go (None: tracing is off): the traces endpoint, else `/v1/traces` under the base endpoint."""
        if self.otel_sdk_disabled:
            return None
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def prompt_label(self) -> str:
        """The Langfuse label served: `langfuse_prompt_label`, else `production` in production, `latest` elsewhere."""
        if self.langfuse_prompt_label is not None:
            return self.langfuse_prompt_label
        return "production" if self.environment == "production" else "latest"


def _split_list(text: str) -> list[str]:
    """A list setting as people type it: a JSON list, or comma-separated items (blanks around items dropped).

    NoDecode keeps pydantic-settings from requiring JSON for these fields, which crashed startup on `alice,bob`.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a valid JSON list: {exc.msg}") from exc
        if not isinstance(decoded, list) or not all(isinstance(item, str) for item in decoded):
            raise ValueError("a JSON list setting must hold strings only")
        return [item.strip() for item in decoded if item.strip()]
    return [item.strip() for item in stripped.split(",") if item.strip()]


def _mcp_servers_of(settings: Settings) -> dict[str, McpServer]:
    servers = {}
    if settings.mcp_servers is not None:
        servers = parse_mcp_servers(settings.mcp_servers, source="COPILOT_MCP_SERVERS", environ=os.environ)
    if settings.mcp_config is not None:
        try:
            text = settings.mcp_config.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"COPILOT_MCP_CONFIG: cannot read {settings.mcp_config}: {exc.strerror}") from None
        for name, server in parse_mcp_servers(text, source=str(settings.mcp_config), environ=os.environ).items():
            if name in servers:
                raise ValueError(f"MCP server {name!r} is in both COPILOT_MCP_SERVERS and {settings.mcp_config}")
            servers[name] = server
    return servers


def _production_problems(settings: Settings) -> list[str]:
    problems = []
    if settings.dev_auth:
        problems.append("COPILOT_DEV_AUTH must be off when COPILOT_ENVIRONMENT=production")
    if settings.jwt_secret is None and settings.jwks_url is None:
        problems.append("production needs COPILOT_JWT_SECRET or COPILOT_JWKS_URL")
    if settings.uses_demo_model:
        problems.append("production needs OPENAI_API_KEY or OPENAI_BASE_URL (the demo model is for development)")
    return problems


def startup_warnings(settings: Settings) -> list[str]:
    """What a start outside production lacks for real use; production refuses these instead (empty there)."""
    warnings = []
    if settings.jwt_secret is None and settings.jwks_url is None and not settings.dev_auth:
        warnings.append(
            "no COPILOT_JWT_SECRET or COPILOT_JWKS_URL and development auth is off: every API request is refused "
            "with 401 (set a key, or run `copilot serve --dev` locally)"
        )
    if settings.uses_demo_model:
        warnings.append(
            "no model configured (OPENAI_API_KEY / OPENAI_BASE_URL): replies come from the built-in demo model"
        )
    return warnings


def context_window_of(settings: Settings, model: str) -> int:
    """The configured window of `model`: an exact entry, else the longest configured prefix, else the default."""
    windows = settings.model_context_windows
    if model in windows:
        return windows[model]
    prefixes = [name for name in windows if model.startswith(name)]
    return windows[max(prefixes, key=len)] if prefixes else settings.context_window_tokens


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
