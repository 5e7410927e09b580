"""Credentials never reach a log line: `?token=` query values, `Authorization` values and bearer JWTs are masked.

Browsers cannot set headers on a WebSocket, so its JWT travels as `?token=`, and uvicorn writes the query string of
every request it logs (the access log, and the `[accepted]` line of each WebSocket). `RedactSecrets` rewrites a
record's message, arguments, structured `fields` and traceback before any handler formats it, whichever format
(JSON or text, `observability/logs.py`) writes it. `install_redaction` puts it on uvicorn's loggers (whatever
handlers a deployment gives them) and on the root logger's handlers (every other logger of the process propagates
there). Logging is process-wide state, so installing is idempotent and done where logging is
configured: `copilot serve` and the app's startup.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

REDACTED = "[REDACTED]"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # `token=` / `access_token=` / `id_token=` / `refresh_token=` in a URL or query string (not `max_tokens=`).
    (re.compile(r"(?i)(?<![\w-])((?:access_|id_|refresh_)?token=)[^&\s\"'#]+"), rf"\1{REDACTED}"),
    # `Authorization: Bearer x`, `'authorization': 'x'`, `authorization=x` (headers dumped as text or a dict).
    (re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*['"]?)(?:(?:bearer|basic)\s+)?[^\s'",;}]+"""), rf"\1{REDACTED}"),
    # A bearer credential wherever it stands.
    (re.compile(r"(?i)(\bbearer\s+)[\w\-.~+/]+=*"), rf"\1{REDACTED}"),
    # A JWT wherever it stands: three base64url parts, the header always JSON (`{"` encodes as `eyJ`).
    (re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*"), REDACTED),
)


def redact(text: str) -> str:
    """`text` with every credential it holds replaced by `[REDACTED]`."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks credentials in a record. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg
        if isinstance(template, str):
            record.msg = redact(template)
        elif template is not None and (text := str(template)) != redact(text):
            record.msg = redact(text)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_argument(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redact_argument(v) for k, v in record.args.items()}
        if isinstance(template, str) and record.args:
            _mask_whole_line(record, template)
        if record.exc_info and not record.exc_text:
            # Formatters reuse `exc_text` when it is set, so the traceback they print is this redacted one.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:  # formatted (and cached) by a handler that ran before this filter's
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "fields", None)  # structured values given with `extra={"fields": {...}}`
        if isinstance(fields, Mapping):
            record.fields = {k: _redact_argument(v) for k, v in fields.items()}
        return True


def _mask_whole_line(record: logging.LogRecord, template: str) -> None:
    """Template and arguments are masked each on its own, which keeps the record's shape (uvicorn's access formatter
    reads its arguments). Two cases need the whole line instead: masking took a placeholder of the template
    (`"Bearer %s"`: the line would be lost to a formatting error), or a credential shows only once template and
    argument meet (`"bearer %s"` with an opaque token). The record then holds the masked line and no arguments."""
    assert isinstance(record.msg, str)
    if _PLACEHOLDER.findall(record.msg) == _PLACEHOLDER.findall(template):
        try:
            line = record.msg % record.args
        except (TypeError, ValueError, KeyError):
            return  # a broken template: the handler reports it, as it would have without this filter
        if redact(line) != line:
            record.msg, record.args = redact(line), ()
        return
    try:
        line = template % record.args
    except (TypeError, ValueError, KeyError):
        record.msg = template  # broken anyway: leave it to the handler's error report, arguments masked
        return
    record.msg, record.args = redact(line), ()


_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")


def _redact_argument(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value  # keeps `%d` formatting (uvicorn's status code)
    text = str(value)  # a URL object, an exception, a dict of headers
    cleaned = redact(text)
    return value if cleaned == text else cleaned


_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def install_redaction() -> None:
    """Put `RedactSecrets` on uvicorn's loggers and on the handlers of the root and uvicorn loggers (idempotent)."""
    root = logging.getLogger()
    targets: list[logging.Filterer] = [*root.handlers]
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    for target in targets:
        if not any(isinstance(f, RedactSecrets) for f in target.filters):
            target.addFilter(RedactSecrets())
