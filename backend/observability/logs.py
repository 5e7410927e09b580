"""Log lines an operator can follow across pods: JSON (or text) with the ids of the request and turn they belong to.

The ids live in context variables: the HTTP middleware binds `request_id` (and the routes' dependencies the
`user_id` and `session_id`) for the request's task; a turn's task starts from a copy of the request's context and
binds its `turn_id` (`observability/turn_log.py`), so every line a turn logs, on whichever pod runs it, carries its
ids. `LogContext` stamps them on each record, with the trace and span ids when a span is recording, and the
formatters write them: `JsonFormatter` one JSON object a line (`time`, `level`, `logger`, `message`, the ids,
`fields` given with `extra={"fields": {...}}`, `exception`), `TextFormatter` the classic line with the ids as
`key=value` at its end.

Credentials are masked by `RedactSecrets` (`log_redaction.py`) before either formatter sees the record; the JSON
formatter writes only the message, the ids, the explicit fields and the traceback, never other record attributes.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from opentelemetry import trace

from backend.log_redaction import install_redaction

LogFormat = Literal["json", "text"]

IDS = ("request_id", "user_id", "session_id", "turn_id")
"""The ids a line may carry, in the order they are written."""

_ids: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"copilot_log_{name}", default=None) for name in IDS
}


def bind(**ids: object) -> None:
    """Set ids for the rest of the current task (and the tasks it starts); a None value leaves an id as it is."""
    for name, value in ids.items():
        if value is not None:
            _ids[name].set(str(value))


def current_ids() -> dict[str, str]:
    """The ids bound in the current context."""
    found = {}
    for name in IDS:
        value = _ids[name].get()
        if value is not None:
            found[name] = value
    return found


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Within the block the context holds this request id and no other id; the ids are as before after it (also
    under a server that runs several requests in one task, such as a test client)."""
    tokens = [(var, var.set(request_id if name == "request_id" else None)) for name, var in _ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class LogContext(logging.Filter):
    """Stamps the current ids (and trace ids) on every record as `record.ids`. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "ids"):  # a record handled twice keeps the ids of the context that emitted it
            ids = current_ids()
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                ids["trace_id"] = format(span.trace_id, "032x")
                ids["span_id"] = format(span.span_id, "016x")
            record.ids = ids
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "ids", None) or {})
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line["fields"] = fields
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extras = {**(getattr(record, "fields", None) or {}), **(getattr(record, "ids", None) or {})}
        if extras:
            text += " [" + " ".join(f"{k}={v}" for k, v in extras.items()) + "]"
        return text


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str, fmt: LogFormat) -> None:
    """One handler on the root logger for every line of the process (uvicorn's too): the format asked for, the ids
    stamped, credentials masked. Replaces handlers an earlier call installed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(LogContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    install_redaction()
