"""Credentials never reach a log line: `?token=` query values, `Authorization` values and bearer JWTs are masked.

Browsers cannot set headers on a WebSocket, so its JWT travels as `?token=`, and uvicorn writes the query string of
every request it logs (the access log, and the `[accepted]` line of each WebSocket). `RedactSecrets` rewrites a
record's message, arguments and traceback before any handler formats it. `install_redaction` puts it on uvicorn's
loggers (whatever handlers a deployment gives them) and on the root logger's handlers (every other logger of the
process propagates there). Logging is process-wide state, so installing is idempotent and done where logging is
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
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        elif record.msg is not None and (text := str(record.msg)) != redact(text):
            record.msg = redact(text)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_argument(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redact_argument(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatters reuse `exc_text` when it is set, so the traceback they print is this redacted one.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


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
