"""The `copilot` command: serve, db upgrade, chat (a terminal client) and mock-llm (the mock model server)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from backend.config import Settings
from backend.observability.logs import configure_logging

if TYPE_CHECKING:
    import uvicorn


def _configure_logging(settings: Settings) -> None:
    """One handler on the root logger for every line of the process (uvicorn's too): JSON or text with the ids of
    the request and turn each line belongs to, credentials masked (`observability/logs.py`)."""
    configure_logging(settings.log_level, settings.resolved_log_format)


def server_config(settings: Settings) -> uvicorn.Config:
    """How `copilot serve` runs uvicorn: the app on the configured interface, request heads bounded in the HTTP
    protocol (`COPILOT_MAX_HEADER_BYTES`: uvicorn parses heads before the app sees them, so only the protocol can
    stop reading one)."""
    import uvicorn

    from backend.api.head_limit import head_limited
    from backend.app import create_app
    from backend.devtools.fallbacks import dev_fallbacks
    from backend.server import CONNECTIONS_GRACE_SECONDS

    return uvicorn.Config(
        create_app(settings, dev_fallbacks()),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn keeps our handler (and its redaction) instead of installing its own
        http=head_limited(settings.max_header_bytes),
        timeout_graceful_shutdown=CONNECTIONS_GRACE_SECONDS,
    )


def _serve(args: argparse.Namespace) -> int:
    from fastapi import FastAPI

    from backend.app import drain
    from backend.server import DrainingServer

    overrides: dict[str, Any] = {}
    if args.dev:
        overrides["dev_auth"] = True
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = _load_settings(**overrides)
    if settings is None:
        return 2
    _configure_logging(settings)
    if settings.dev_auth:
        logging.getLogger("copilot").warning(
            "development auth is ON: requests without a token act as user %r", settings.dev_user_id
        )
    config = server_config(settings)
    app = config.app
    assert isinstance(app, FastAPI)
    server = DrainingServer(config, drain=lambda: drain(app))
    server.run()
    return 0 if server.started else 3  # uvicorn's own exit code for a server that failed to start


def _load_settings(**overrides: Any) -> Settings | None:
    """The settings, or None after telling the operator in plain sentences why they cannot run."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = []
        for error in e.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            where = ".".join(str(part) for part in error["loc"])
            problems += [f"{where}: {message}" if where else message]
        print("copilot: refusing to start:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return None


def _db_upgrade(_: argparse.Namespace) -> int:
    from backend.store.migrate import upgrade_dsn

    settings = _load_settings()
    if settings is None:
        return 2
    _configure_logging(settings)
    if settings.database_url is None:
        print(
            "DATABASE_URL is not set (the embedded database migrates itself at `copilot serve`)",
            file=sys.stderr,
        )
        return 2
    applied = asyncio.run(upgrade_dsn(settings.database_url, statement_cache_size=settings.db_statement_cache_size))
    print(f"applied {len(applied)} migration(s)" if applied else "database is up to date")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from backend.devtools.terminal_chat import run

    return run(args.url, args.token or os.environ.get("COPILOT_TOKEN"), args.session)


def _mock_llm(args: argparse.Namespace) -> int:
    from backend.devtools.mock_llm import run

    run(args.host, args.port, default_tokens=args.tokens, default_delay_ms=args.delay_ms)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="copilot", description="copilot-chat service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API server")
    serve.add_argument("--host", help="interface to bind (default: COPILOT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: COPILOT_PORT or 8000)")
    serve.add_argument("--dev", action="store_true", help="development auth: no token needed (never in production)")
    serve.set_defaults(func=_serve)

    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations").set_defaults(func=_db_upgrade)

    chat = commands.add_parser("chat", help="chat with a running server in the terminal")
    chat.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (default: %(default)s)")
    chat.add_argument("--token", help="bearer token (default: COPILOT_TOKEN; none for a --dev server)")
    chat.add_argument("--session", metavar="ID", help="continue this session instead of starting one")
    chat.set_defaults(func=_chat)

    mock = commands.add_parser("mock-llm", help="run the OpenAI-compatible mock model server")
    mock.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    mock.add_argument("--port", type=int, default=8001, help="port (default: %(default)s)")
    mock.add_argument("--tokens", type=int, metavar="N", help="length of replies that do not set one, in tokens")
    mock.add_argument("--delay-ms", type=float, default=0.0, metavar="MS", help="pause between chunks (default: 0)")
    mock.set_defaults(func=_mock_llm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
