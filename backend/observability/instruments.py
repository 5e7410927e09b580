"""The app's operational instruments (Prometheus metrics, OpenTelemetry tracing) and the observers it hands out.

`create_app` builds them from the settings (the HTTP middleware needs them before the lifespan starts) and the
runtime plugs their observers into what it opens: the Redis client, the Postgres pool, the model client, the
per-user limits, the completion consumer. An observer is None when nothing would record its calls, so an app with
metrics and tracing off pays nothing on those paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Histogram

from backend.config import Settings
from backend.observability.metrics import Metrics
from backend.observability.metrics_telemetry import ModelMetrics
from backend.observability.tracing import Tracing

log = logging.getLogger("copilot.metrics")

SAMPLE_SECONDS = 15.0
"""How often each process samples the shared backlogs (pending operations, completions) into gauges."""

LAG_PROBE_SECONDS = 0.5
"""How often the event loop's lag is measured."""


class Backlog(Protocol):
    @property
    def lag(self) -> int: ...

    @property
    def pending(self) -> int: ...

    @property
    def dead_letters(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Instruments:
    metrics: Metrics | None
    tracing: Tracing

    @classmethod
    def from_settings(cls, settings: Settings) -> Instruments:
        metrics = Metrics(multiprocess_dir=settings.prometheus_multiproc_dir) if settings.metrics_enabled else None
        endpoint = settings.otlp_traces_endpoint
        return cls(metrics, Tracing.otlp(endpoint) if endpoint else Tracing.off())

    @classmethod
    def off(cls) -> Instruments:
        return cls(None, Tracing.off())

    @property
    def _storage_observed(self) -> bool:
        return self.metrics is not None or self.tracing.enabled

    def redis_observer(self) -> Callable[[str, float, bool], None] | None:
        if not self._storage_observed:
            return None
        return self._storage_observer("redis", self.metrics.redis_duration if self.metrics else None)

    def _storage_observer(self, system: str, histogram: Histogram | None) -> Callable[[str, float, bool], None]:
        metrics, tracing = self.metrics, self.tracing
        errors = None if metrics is None else metrics.redis_errors if system == "redis" else metrics.postgres_errors
        # Specialised once: this runs for every Redis command and Postgres statement.
        durations: dict[str, Any] = {}

        def record(name: str, seconds: float, failed: bool) -> None:
            child = durations.get(name)
            if child is None:
                child = durations[name] = histogram.labels(name)  # type: ignore[union-attr]
            child.observe(seconds)
            if failed:
                errors.labels(name).inc()  # type: ignore[union-attr]

        def span(name: str, seconds: float, failed: bool) -> None:
            tracing.storage_span(system, name, seconds, failed)

        def both(name: str, seconds: float, failed: bool) -> None:
            record(name, seconds, failed)
            span(name, seconds, failed)

        if metrics is None:
            return span
        return both if tracing.enabled else record

    def postgres_observer(self) -> Callable[[str, float, bool], None] | None:
        if not self._storage_observed:
            return None
        return self._storage_observer("postgresql", self.metrics.postgres_duration if self.metrics else None)

    def model_observer(self) -> ModelMetrics | None:
        return ModelMetrics(self.metrics) if self.metrics is not None else None

    def limit_refused(self) -> Callable[[str], None] | None:
        metrics = self.metrics
        if metrics is None:
            return None
        return lambda limit: metrics.child(metrics.limit_refusals, limit).inc()

    def turn_overloaded(self) -> Callable[[], None] | None:
        metrics = self.metrics
        if metrics is None:
            return None
        return lambda: metrics.turns_overloaded.inc()

    def dead_lettered(self) -> Callable[[], None] | None:
        metrics = self.metrics
        if metrics is None:
            return None
        return lambda: metrics.dead_lettered.inc()


class BacklogSampler:
    """Samples what waits across all pods (unsettled operations in Postgres, the completions' backlog in Redis) into
    gauges. Each source on its own: one being down leaves the other's gauges fresh, and counts a failure."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        operations: Callable[[], Awaitable[tuple[int, float]]],
        completions: Callable[[], Awaitable[Backlog]],
    ) -> None:
        self._metrics = metrics
        self._operations = operations
        self._completions = completions

    async def sample(self) -> None:
        m = self._metrics
        try:
            pending, oldest = await self._operations()
            m.operations_pending.set(pending)
            m.operations_oldest_age.set(oldest)
        except Exception as e:
            m.child(m.samples_failed, "postgres").inc()
            log.warning("could not sample the pending operations: %s: %s", type(e).__name__, e)
        try:
            backlog = await self._completions()
            m.completion_lag.set(backlog.lag)
            m.completion_pending.set(backlog.pending)
            m.dead_letters.set(backlog.dead_letters)
        except Exception as e:
            m.child(m.samples_failed, "redis").inc()
            log.warning("could not sample the completions' backlog: %s: %s", type(e).__name__, e)


async def watch_loop_lag(metrics: Metrics) -> None:
    """Until cancelled: how much later than asked the loop wakes this task up, into `copilot_event_loop_lag_seconds`.
    A loop busy with CPU work (or blocked by a synchronous call) is late for every timer and every stream."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + LAG_PROBE_SECONDS
        await asyncio.sleep(LAG_PROBE_SECONDS)
        metrics.loop_lag.observe(max(0.0, loop.time() - asked))
