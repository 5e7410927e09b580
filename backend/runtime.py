"""The process's open resources (pools, clients, stores), created once in the lifespan and closed at shutdown.

Nothing here is global: the app factory builds a `Runtime` from its `Settings` and hangs it on `app.state`, so a
test can run several apps with their own settings in one process.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from redis.asyncio import Redis

from backend.auth import Authenticator
from backend.cancellation import check_cancelled
from backend.chat.compaction import Compactor
from backend.chat.context_budget import ContextBudget
from backend.chat.context_window import Calibration, ContextPolicy
from backend.chat.human_input import HumanInput
from backend.chat.langfuse_prompts import PromptSource
from backend.chat.llm import CallObserver, LLMClient, RetryPolicy, Usage
from backend.chat.llm_response_state import ResponseChains
from backend.chat.local_turns import LocalTurns
from backend.chat.operation_runner import OperationRunner
from backend.chat.quota import billed_user
from backend.chat.session_admission import SessionAdmission
from backend.chat.system_prompt import default_prompt
from backend.chat.title import TitleWriter
from backend.chat.tokens import TokenCounter
from backend.chat.turn_admission import TurnAdmission
from backend.chat.turn_capacity import TurnCapacity
from backend.chat.turn_driver import TurnDriver
from backend.chat.turn_state import TurnLimits, TurnServices
from backend.chat.turn_supervisor import TurnSupervisor
from backend.config import Settings, context_window_of
from backend.dependencies_wait import wait_for_postgres
from backend.errors import ConfigurationError
from backend.observability.instruments import SAMPLE_SECONDS, BacklogSampler, Instruments, watch_loop_lag
from backend.observability.langfuse_tracing import LangfuseConnection
from backend.observability.telemetry import Telemetry
from backend.observability.wiring import open_observability
from backend.redis_client import open_redis
from backend.store.active_turns import ActiveTurnStore
from backend.store.awaiting import AwaitingCalls
from backend.store.cache import SessionCache
from backend.store.mcp_servers import SessionMcpServerStore
from backend.store.migrate import upgrade_dsn
from backend.store.operations import OperationStore
from backend.store.pending import PendingWrites
from backend.store.postgres import ChatRepository, create_pool
from backend.store.reconciler import Reconciler
from backend.store.response_chains import ResponseChainStore
from backend.store.sessions import SessionStore
from backend.streams.active import ActiveTurns
from backend.streams.completions import CompletionConsumer, backlog
from backend.streams.limits import StreamLimits
from backend.streams.operation_locks import OperationLocks
from backend.streams.turns import TurnRegistry
from backend.streams.user_limits import UserLimits
from backend.tools.mcp.sealed_headers import HeaderSealer
from backend.tools.mcp.session_servers import SessionMcpServers
from backend.tools.mcp.source import McpToolSource, open_mcp_tools
from backend.tools.mcp.url_policy import UrlPolicy
from backend.tools.registry import ToolRegistry, build_registry

log = logging.getLogger("copilot.runtime")


async def _nothing_to_stop() -> None:
    return None


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    sessions: SessionStore
    auth: Authenticator
    llm: LLMClient
    tools: ToolRegistry
    turn_registry: TurnRegistry
    admission: TurnAdmission
    """Lets turns in: messages, continuations, the stop button."""
    driver: TurnDriver
    """Runs this pod's turns and follows any turn."""
    supervisor: TurnSupervisor
    prompts: PromptSource
    operations: OperationRunner
    limits: UserLimits
    mcp: McpToolSource
    """The MCP servers whose tools are in `tools`, with their connection states."""
    session_mcp: SessionMcpServers
    """The MCP servers sessions' owners added, and this pod's connections to them."""
    human_input: HumanInput
    """Answers to the calls that wait for a person (frontend tools, `ask_user`, approvals)."""
    instruments: Instruments = field(default_factory=Instruments.off)
    stop_consuming: Callable[[], Awaitable[None]] = field(default=_nothing_to_stop)
    """Stops this pod's completion consumer (other pods take the completions)."""

    async def drain(self) -> None:
        """What a pod does on SIGTERM before it exits: refuse new turns at once (readiness answers 503), stop taking
        operation completions (whose continuations are turns too), give the running turns
        `shutdown_grace_seconds`, then stop them. Streams of other pods' turns keep being served meanwhile."""
        self.admission.refuse_new_turns()
        await self.stop_consuming()
        await self.driver.drain(self.settings.shutdown_grace_seconds)


class ServiceUrls(Protocol):
    """The URLs of the servers a `Fallbacks.services` started (None for one it was not asked for)."""

    @property
    def database_url(self) -> str | None: ...

    @property
    def redis_url(self) -> str | None: ...


class DemoModel(Protocol):
    @property
    def base_url(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Fallbacks:
    """Stand-ins for what the settings leave unset, handed in by whoever starts the service: `copilot serve` plugs
    in the embedded servers and the demo model (dev tools, which this module never imports). Without one, an unset
    `DATABASE_URL` / `REDIS_URL` or model is a `ConfigurationError` at startup."""

    services: Callable[..., AbstractAsyncContextManager[ServiceUrls]] | None = None
    """`services(data_dir, postgres=bool, redis=bool)`: servers for the URLs that are unset."""
    demo_model: Callable[[], AbstractAsyncContextManager[DemoModel]] | None = None
    """An OpenAI-compatible model to answer when no model is configured (never in production)."""
    report_worker: Callable[[str, Settings], AbstractAsyncContextManager[None]] | None = None
    """`report_worker(redis_url, settings)`: the external worker of `generate_report`, run in process alongside the
    demo model, so the long-running flow works with no second process."""


@asynccontextmanager
async def open_runtime(
    settings: Settings, fallbacks: Fallbacks | None = None, instruments: Instruments | None = None
) -> AsyncIterator[Runtime]:
    """Open everything a pod runs on, in dependency order; closing the stack takes it down in the reverse order
    (the turns' admission first, the pool and Redis last)."""
    fallbacks = fallbacks or Fallbacks()
    instruments = instruments or Instruments.off()
    async with AsyncExitStack() as stack:
        stores = await _open_stores(settings, stack, fallbacks, instruments)
        chains = ResponseChains(ResponseChainStore(stores.pool)) if settings.responses_state == "server" else None
        llm = await _open_model(settings, stack, fallbacks, stores.limits, instruments.model_observer(), chains)
        tools, mcp = await _open_tools(settings, stack)
        session_mcp = _open_session_mcp(settings, stack, stores.pool)
        registry = TurnRegistry(
            stores.redis, ttl_seconds=settings.turn_stream_ttl_seconds, lease_seconds=settings.turn_lease_seconds
        )
        helpers = _open_model_helpers(settings, stack, stores, llm)
        operations = _open_operations(settings, stack, stores, registry, helpers.counter)
        services = _turn_services(settings, stores, llm, tools, session_mcp, helpers, operations.runner)
        observability = await open_observability(settings, stack, instruments)
        prompts = await _open_prompts(settings, stack, observability.langfuse)
        turns = await _open_turns(
            settings, stack, stores, registry, services, helpers, prompts, observability.telemetry, instruments
        )
        operations.runner.set_continuation(turns.admission.continue_operation)
        human_input = HumanInput(stores.awaiting, turns.admission, services)
        stop_consuming = await _run_background_work(settings, stack, stores, operations, human_input, instruments)
        if settings.uses_demo_model and fallbacks.report_worker is not None:
            await stack.enter_async_context(fallbacks.report_worker(stores.redis_url, settings))
        yield Runtime(
            settings=settings,
            pool=stores.pool,
            redis=stores.redis,
            sessions=stores.sessions,
            auth=Authenticator(settings),
            llm=llm,
            tools=tools,
            turn_registry=registry,
            admission=turns.admission,
            driver=turns.driver,
            supervisor=turns.supervisor,
            prompts=prompts,
            operations=operations.runner,
            limits=stores.limits,
            mcp=mcp,
            session_mcp=session_mcp,
            human_input=human_input,
            instruments=instruments,
            stop_consuming=stop_consuming,
        )


@dataclass(frozen=True, slots=True)
class _Stores:
    """Postgres and Redis, and the stores and per-user limits kept in them."""

    pool: asyncpg.Pool
    redis: Redis
    redis_url: str
    pending: PendingWrites
    sessions: SessionStore
    awaiting: AwaitingCalls
    limits: UserLimits


async def _open_stores(
    settings: Settings, stack: AsyncExitStack, fallbacks: Fallbacks, instruments: Instruments
) -> _Stores:
    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or redis_url is None:
        if fallbacks.services is None:
            raise ConfigurationError("set DATABASE_URL and REDIS_URL (only `copilot serve` embeds servers)")
        urls = await stack.enter_async_context(
            fallbacks.services(settings.data_dir, postgres=database_url is None, redis=redis_url is None)
        )
        database_url = database_url or urls.database_url
        redis_url = redis_url or urls.redis_url
    assert database_url is not None and redis_url is not None

    await wait_for_postgres(database_url, within_seconds=settings.startup_wait_seconds)
    if settings.migrate_on_startup:
        await upgrade_dsn(database_url, statement_cache_size=settings.db_statement_cache_size)
    pool = await create_pool(
        database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        statement_cache_size=settings.db_statement_cache_size,
        observe=instruments.postgres_observer(),
    )
    stack.push_async_callback(pool.close)
    redis = open_redis(redis_url, cluster=settings.redis_cluster, observe=instruments.redis_observer())
    stack.push_async_callback(redis.aclose)

    pending = PendingWrites(redis)
    sessions = SessionStore(
        ChatRepository(pool), SessionCache(redis, ttl_seconds=settings.session_cache_ttl_seconds), pending
    )
    stack.push_async_callback(sessions.close)
    limits = UserLimits(
        redis,
        requests_per_minute=settings.rate_limit_requests_per_minute,
        concurrent_turns=settings.rate_limit_concurrent_turns,
        tokens_per_day=settings.rate_limit_tokens_per_day,
        limit_admins=settings.rate_limit_admins,
        lease_seconds=settings.turn_lease_seconds,
        max_turn_seconds=settings.turn_max_seconds,
        on_refused=instruments.limit_refused(),
    )
    stack.push_async_callback(limits.close)
    awaiting = AwaitingCalls(pool, sessions, timeout_seconds=settings.human_input_timeout_seconds)
    return _Stores(
        pool=pool,
        redis=redis,
        redis_url=redis_url,
        pending=pending,
        sessions=sessions,
        awaiting=awaiting,
        limits=limits,
    )


async def _open_tools(settings: Settings, stack: AsyncExitStack) -> tuple[ToolRegistry, McpToolSource]:
    """The configured tools, and the MCP servers that add theirs to the same registry."""
    tools = build_registry(settings.tools)
    mcp = await stack.enter_async_context(
        open_mcp_tools(
            settings.mcp_server_specs,
            tools,
            tool_timeout_seconds=settings.mcp_tool_timeout_seconds,
            connect_timeout_seconds=settings.mcp_connect_timeout_seconds,
            tools_ttl_seconds=settings.mcp_tools_ttl_seconds,
            reconnect_max_seconds=settings.mcp_reconnect_max_seconds,
            startup_wait_seconds=settings.mcp_startup_wait_seconds,
        )
    )
    return tools, mcp


def _open_session_mcp(settings: Settings, stack: AsyncExitStack, pool: asyncpg.Pool) -> SessionMcpServers:
    """The MCP servers sessions' owners add, and this pod's connections to them (closed when idle)."""
    session_mcp = SessionMcpServers(
        SessionMcpServerStore(pool),
        HeaderSealer(settings.mcp_headers_key.get_secret_value()) if settings.mcp_headers_key else None,
        UrlPolicy(settings.mcp_allowed_hosts, settings.mcp_allowed_networks),
        tool_timeout_seconds=settings.mcp_tool_timeout_seconds,
        connect_timeout_seconds=settings.mcp_connect_timeout_seconds,
        tools_ttl_seconds=settings.mcp_tools_ttl_seconds,
        reconnect_max_seconds=settings.mcp_reconnect_max_seconds,
        idle_seconds=settings.mcp_session_idle_seconds,
        max_servers=settings.mcp_session_servers_max,
    )
    session_mcp.start()
    stack.push_async_callback(session_mcp.close)
    return session_mcp


@dataclass(frozen=True, slots=True)
class _ModelHelpers:
    """What works beside the turns' own model calls: token counting, titles, summaries."""

    counter: TokenCounter
    titles: TitleWriter
    compactor: Compactor


def _open_model_helpers(settings: Settings, stack: AsyncExitStack, stores: _Stores, llm: LLMClient) -> _ModelHelpers:
    titles = TitleWriter(llm, stores.sessions, model=settings.title_model)
    stack.push_async_callback(titles.close)
    counter = TokenCounter(llm.model)
    compactor = Compactor(
        llm=llm,
        store=stores.sessions,
        redis=stores.redis,
        counter=counter,
        model=settings.summary_model,
        max_input_tokens=settings.summary_max_input_tokens,
        max_summary_tokens=settings.summary_max_tokens,
        timeout_seconds=settings.summary_timeout_seconds,
    )
    stack.push_async_callback(compactor.close)
    return _ModelHelpers(counter=counter, titles=titles, compactor=compactor)


@dataclass(frozen=True, slots=True)
class _Operations:
    """Long-running operations: the runner, their Postgres records and the bounds of their streams."""

    runner: OperationRunner
    store: OperationStore
    stream_limits: StreamLimits


def _open_operations(
    settings: Settings, stack: AsyncExitStack, stores: _Stores, registry: TurnRegistry, counter: TokenCounter
) -> _Operations:
    stream_limits = StreamLimits(
        completions=settings.completion_stream_max_len,
        dead_letters=settings.completion_dead_letter_max_len,
        jobs=settings.job_stream_max_len,
    )
    store = OperationStore(stores.pool)
    runner = OperationRunner(
        redis=stores.redis,
        operations=store,
        locks=OperationLocks(stores.redis),
        registry=registry,
        store=stores.sessions,
        counter=counter,
        lock_seconds=settings.operation_lock_seconds,
        delegated_timeout_seconds=settings.delegated_operation_timeout_seconds,
        stale_claim_seconds=settings.completion_reclaim_idle_seconds,
        limits=stream_limits,
    )
    stack.push_async_callback(runner.close)
    return _Operations(runner=runner, store=store, stream_limits=stream_limits)


def _turn_services(
    settings: Settings,
    stores: _Stores,
    llm: LLMClient,
    tools: ToolRegistry,
    session_mcp: SessionMcpServers,
    helpers: _ModelHelpers,
    operations: OperationRunner,
) -> TurnServices:
    """What every turn works with, wired once."""
    budget = ContextBudget(
        window=context_window_of(settings, llm.model),
        reserved_output=settings.reserved_output_tokens,
        margin=settings.context_safety_margin,
        soft=settings.compaction_soft_ratio,
        hard=settings.compaction_hard_ratio,
        target=settings.compaction_target_ratio,
        max_live_messages=settings.context_max_live_messages,
    )
    return TurnServices(
        store=stores.sessions,
        llm=llm,
        tools=tools,
        counter=helpers.counter,
        limits=TurnLimits(
            settings.max_tool_rounds,
            settings.invalid_tool_json_retries,
            settings.max_tool_output_tokens,
            store_retry_seconds=settings.store_retry_seconds,
        ),
        policy=ContextPolicy(budget, Calibration()),
        compactor=helpers.compactor,
        operations=operations,
        prices=settings.model_prices,
        session_tools=session_mcp if session_mcp.enabled else None,
        awaiting=stores.awaiting,
        needing_approval=frozenset(settings.tools_requiring_approval),
    )


async def _open_prompts(settings: Settings, stack: AsyncExitStack, langfuse: LangfuseConnection | None) -> PromptSource:
    """The system prompt: from Langfuse when it is configured, the built-in one otherwise."""
    prompts = PromptSource(
        langfuse.client if langfuse else None,
        name=settings.langfuse_prompt_name,
        label=settings.prompt_label,
        ttl_seconds=settings.prompt_cache_ttl_seconds,
        fallback=default_prompt(),
    )
    await prompts.start()
    stack.push_async_callback(prompts.close)
    return prompts


@dataclass(frozen=True, slots=True)
class _Turns:
    admission: TurnAdmission
    driver: TurnDriver
    supervisor: TurnSupervisor


async def _open_turns(
    settings: Settings,
    stack: AsyncExitStack,
    stores: _Stores,
    registry: TurnRegistry,
    services: TurnServices,
    helpers: _ModelHelpers,
    prompts: PromptSource,
    telemetry: Telemetry,
    instruments: Instruments,
) -> _Turns:
    """The turn machinery: who lets turns in, who runs them, who watches over their leases."""
    active = SessionAdmission(
        ActiveTurns(stores.redis, lease_seconds=settings.turn_max_seconds + 60),
        ActiveTurnStore(stores.pool),
        lease_seconds=settings.turn_lease_seconds,
    )
    local = LocalTurns()
    supervisor = TurnSupervisor(local, registry=registry, active=active, store=stores.sessions, counter=helpers.counter)
    await supervisor.start()
    stack.push_async_callback(supervisor.close)
    driver = TurnDriver(
        local,
        supervisor,
        services=services,
        registry=registry,
        active=active,
        quota=stores.limits,
        prompt=prompts.current,
        telemetry=telemetry,
        turn_max_seconds=settings.turn_max_seconds,
        publish_window_seconds=settings.publish_window_ms / 1000,
        approval_chunks=settings.ai_sdk_version >= 6,
    )
    stack.push_async_callback(driver.shutdown)
    admission = TurnAdmission(
        local,
        driver,
        supervisor,
        store=stores.sessions,
        registry=registry,
        active=active,
        quota=stores.limits,
        titles=helpers.titles,
        counter=helpers.counter,
        turn_max_seconds=settings.turn_max_seconds,
        double_texting=settings.double_texting,
        capacity=TurnCapacity(
            local,
            max_running=settings.max_concurrent_turns,
            retry_after=settings.overloaded_retry_after_seconds,
            on_overloaded=instruments.turn_overloaded(),
        ),
    )
    stack.callback(admission.refuse_new_turns)  # at shutdown, first
    return _Turns(admission=admission, driver=driver, supervisor=supervisor)


async def _run_background_work(
    settings: Settings,
    stack: AsyncExitStack,
    stores: _Stores,
    operations: _Operations,
    human_input: HumanInput,
    instruments: Instruments,
) -> Callable[[], Awaitable[None]]:
    """Start the pod's loops (completion consumer, overdue operations, slot leases, metrics, pending writes, calls
    that waited too long for a person), each stopped with the stack; returns what stops the completion consumer
    alone, for the drain."""
    consumer = CompletionConsumer(
        stores.redis,
        consumer=f"pod-{uuid.uuid4().hex[:12]}",
        reclaim_idle_seconds=settings.completion_reclaim_idle_seconds,
        max_deliveries=settings.completion_max_deliveries,
        dead_letter_max_len=operations.stream_limits.dead_letters,
        on_dead_letter=instruments.dead_lettered(),
    )
    consuming = await stack.enter_async_context(
        _background(consumer.consume(operations.runner.complete), "completion consumer")
    )
    await stack.enter_async_context(_background(_every(5.0, operations.runner.fail_overdue), "overdue operations"))

    async def expire_waiting_calls() -> None:
        await human_input.expire_overdue()

    every = min(60.0, settings.human_input_timeout_seconds / 4)
    await stack.enter_async_context(_background(_every(every, expire_waiting_calls), "calls waiting for a person"))
    renew_every = settings.turn_lease_seconds / 3
    await stack.enter_async_context(_background(_every(renew_every, stores.limits.renew), "turn slot leases"))
    if instruments.metrics is not None:
        sampler = BacklogSampler(
            instruments.metrics, operations=operations.store.open_count, completions=lambda: backlog(stores.redis)
        )
        await sampler.sample()
        await stack.enter_async_context(_background(_every(SAMPLE_SECONDS, sampler.sample), "metrics sampler"))
        await stack.enter_async_context(_background(watch_loop_lag(instruments.metrics), "event loop lag"))
    reconciler = Reconciler(stores.sessions, stores.pending)
    await stack.enter_async_context(
        _background(_every(settings.reconcile_interval_seconds, reconciler.run_once), "pending writes")
    )
    return lambda: _stop(consuming)


@asynccontextmanager
async def _background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run `work` for the lifetime of the runtime (or until its task is stopped); a crash is logged, shutdown
    cancels it."""

    async def guarded() -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped", name)

    task = asyncio.create_task(guarded(), name=name)
    try:
        yield task
    finally:
        await _stop(task)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        check_cancelled()
        await asyncio.sleep(seconds)
        try:
            await action()
        except Exception:
            log.exception("periodic %s failed", getattr(action, "__name__", "task"))


async def _open_model(
    settings: Settings,
    stack: AsyncExitStack,
    fallbacks: Fallbacks,
    limits: UserLimits,
    observer: CallObserver | None = None,
    chains: ResponseChains | None = None,
) -> LLMClient:
    """The model client; every call's tokens are spent from the daily budget of the user it is billed to."""

    def spend(usage: Usage) -> None:
        limits.spend(billed_user(), usage.prompt_tokens + usage.completion_tokens)

    base_url, model = settings.llm_base_url, settings.model
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    if settings.uses_demo_model:
        if settings.environment == "production":  # settings copied without validation end up here, not in a demo
            raise ConfigurationError("production needs OPENAI_API_KEY or OPENAI_BASE_URL: no demo model there")
        if fallbacks.demo_model is None:
            raise ConfigurationError("set OPENAI_API_KEY or OPENAI_BASE_URL (only `copilot serve` has a demo model)")
        demo = await stack.enter_async_context(fallbacks.demo_model())
        base_url, model = demo.base_url, "mock-model"
        log.info("the built-in demo model answers at %s", base_url)  # the app warned at startup already
    llm = LLMClient(
        base_url=base_url,
        api_key=api_key,
        model=model,
        retry=RetryPolicy(settings.llm_max_retries, settings.llm_retry_base_seconds, settings.llm_retry_max_seconds),
        idle_timeout=settings.llm_idle_timeout_seconds,
        on_usage=spend,
        observer=observer,
        api=settings.llm_api,
        response_chains=chains,
        reasoning_summary=None
        if settings.responses_reasoning_summary == "off"
        else settings.responses_reasoning_summary,
    )
    stack.push_async_callback(llm.close)
    return llm
