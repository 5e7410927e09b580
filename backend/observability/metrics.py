"""The service's Prometheus metrics: every family in one place, and their exposition for `GET /metrics`.

One `Metrics` per app (no module-level metric objects): its own `CollectorRegistry`, so several apps in one
process (tests) count apart. With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set in the environment,
which prometheus_client reads when it is imported) each process writes its values to files in that directory and a
scrape of any worker adds up all of them; metric objects are then registered nowhere and exposition reads the
files. Gauges say how workers combine: `livesum` for what each worker holds (turns running, streams open),
`livemostrecent` for what every worker samples alike (pending operations, consumer lag).

Recording is cheap: a label set's child is looked up once and kept (`_child`), so the hot paths (a Redis command,
a Postgres query) cost a dict lookup and one locked add.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from backend.errors import ConfigurationError

NAMESPACE = "copilot"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FIRST_TOKEN = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
_TURN = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_TOOL = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_MODEL = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")

M = TypeVar("M", Counter, Gauge, Histogram)


def label(value: str | None, *, default: str = "none") -> str:
    """A label value from outside text (a provider's error code, a tool's name): kept when short and plain, else
    `other`, so a provider that puts free text in its error codes cannot create a series per request."""
    if not value:
        return default
    return value if _LABEL_VALUE.fullmatch(value) else "other"


class Metrics:
    """Every metric family of the service. See docs/operations.md for what each one means."""

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None and prometheus_values.ValueClass is prometheus_values.MutexValue:
            raise ConfigurationError(
                "PROMETHEUS_MULTIPROC_DIR must be set in the environment of the server process (prometheus_client "
                "reads it when it is imported; a .env file does not reach it)"
            )
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if multiprocess_dir is not None else self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        if multiprocess_dir is None:
            # The process's CPU, memory, open files, Python version and garbage collections (`process_*`,
            # `python_*`). Not in multi-process mode: prometheus_client cannot add those up across workers.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

        def gauge(name: str, doc: str, labels: Sequence[str] = (), *, mode: str = "livesum") -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]

        def histogram(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, labels, namespace=NAMESPACE, registry=registry, buckets=buckets)

        # HTTP
        self.http_requests = counter(
            "http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
        )
        self.http_duration = histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head (a stream's head goes out before its body).",
            ("method", "route"),
            _LATENCY,
        )
        self.streams_open = gauge("streams_open", "Reply streams held open to clients, by transport.", ("transport",))
        # turns
        self.turns_started = counter("turns_started_total", "Turns started (new messages and continuations).")
        self.turns_finished = counter("turns_finished_total", "Turns ended, by outcome.", ("outcome",))
        self.turns_running = gauge("turns_running", "Turns running on this process.")
        self.turns_overloaded = counter(
            "turns_overloaded_total",
            "New turns this process refused (503 overloaded): it ran max_concurrent_turns already.",
        )
        self.first_token = histogram(
            "turn_time_to_first_token_seconds",
            "From the start of a turn to its first streamed text.",
            (),
            _FIRST_TOKEN,
        )
        self.turn_duration = histogram(
            "turn_duration_seconds", "From the start of a turn to its end, by outcome.", ("outcome",), _TURN
        )
        # the model
        self.model_calls = counter(
            "model_calls_total",
            "Model calls (turn steps, titles, summaries) by model and outcome.",
            ("model", "outcome"),
        )
        self.model_duration = histogram(
            "model_call_duration_seconds",
            "Duration of successful model calls (retries included), by model.",
            ("model",),
            _MODEL,
        )
        self.model_retries = counter(
            "model_retries_total", "Failed model attempts that were retried, by provider error code.", ("code",)
        )
        self.model_errors = counter(
            "model_errors_total", "Model calls that failed for good, by provider error code.", ("code",)
        )
        self.model_tokens = counter(
            "model_tokens_total",
            "Tokens the provider reported, by model and direction (input, output).",
            ("model", "direction"),
        )
        # tools
        self.tool_calls = counter(
            "tool_calls_total", "Tool calls by tool and outcome (ok, error).", ("tool", "outcome")
        )
        self.tool_duration = histogram("tool_call_duration_seconds", "Tool call duration by tool.", ("tool",), _TOOL)
        # operations and completions (sampled from Postgres and Redis by every process)
        self.operations_pending = gauge(
            "operations_pending",
            "Long-running operations not settled yet (pending or completing).",
            mode="livemostrecent",
        )
        self.operations_oldest_age = gauge(
            "operations_oldest_pending_age_seconds",
            "Age of the oldest unsettled long-running operation (0 when none).",
            mode="livemostrecent",
        )
        self.completion_lag = gauge(
            "completion_consumer_lag",
            "Completions in the stream not yet delivered to the consumer group.",
            mode="livemostrecent",
        )
        self.completion_pending = gauge(
            "completion_consumer_pending",
            "Completions delivered to a consumer and not acknowledged yet.",
            mode="livemostrecent",
        )
        self.dead_letters = gauge(
            "completion_dead_letters", "Entries in the completions' dead-letter stream.", mode="livemostrecent"
        )
        self.dead_lettered = counter(
            "completion_dead_lettered_total", "Completions this process moved to the dead-letter stream."
        )
        self.samples_failed = counter(
            "sample_failures_total", "Failed samplings of the gauges above, by source (postgres, redis).", ("source",)
        )
        # the process
        self.loop_lag = histogram(
            "event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled twice a second): work blocking the loop delays every stream.",
            (),
            _FAST,
        )
        # storage
        self.redis_duration = histogram(
            "redis_command_duration_seconds",
            "Redis round trips by command (pipelines as PIPELINE; blocking reads are not timed).",
            ("command",),
            _FAST,
        )
        self.redis_errors = counter("redis_errors_total", "Redis commands that failed, by command.", ("command",))
        self.postgres_duration = histogram(
            "postgres_query_duration_seconds", "Postgres statements by their first keyword.", ("statement",), _FAST
        )
        self.postgres_errors = counter(
            "postgres_errors_total", "Postgres statements that failed, by their first keyword.", ("statement",)
        )
        # limits
        self.limit_refusals = counter(
            "rate_limit_refusals_total",
            "Requests and turns refused by a per-user limit (requests_per_minute, concurrent_turns, tokens_per_day).",
            ("limit",),
        )

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, looked up once per label set."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def scrape_registry(self) -> CollectorRegistry:
        """What a scrape reads: this app's registry, or (multi-process) the files of all workers."""
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return registry

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        return generate_latest(self.scrape_registry()), CONTENT_TYPE_LATEST


@contextmanager
def serve_metrics(metrics: Metrics, host: str, port: int) -> Iterator[None]:
    """The exposition on a port of its own (prometheus_client's HTTP server, on a thread) for the block."""
    server, thread = start_http_server(port, addr=host, registry=metrics.scrape_registry())
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
