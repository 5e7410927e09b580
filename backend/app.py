"""The app factory: routes, error mapping and the lifespan that opens the runtime."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api import (
    admin,
    agui,
    chat,
    docs,
    health,
    info,
    mcp_servers,
    metrics,
    operations,
    panel,
    sessions,
    tool_calls,
    transcript,
    ui_messages,
    ws,
)
from backend.api.limits import BodyLimit, HeaderLimit
from backend.api.observe import ObserveRequests
from backend.config import Settings, startup_warnings
from backend.errors import CopilotError
from backend.log_redaction import install_redaction
from backend.observability.instruments import Instruments
from backend.observability.metrics import serve_metrics
from backend.runtime import Fallbacks, Runtime, open_runtime

log = logging.getLogger("copilot.app")


@asynccontextmanager
async def _startup_heap_frozen() -> AsyncIterator[None]:
    """Exempt what startup built (modules, schemas, routes, the runtime: some 250,000 objects) from the cyclic GC
    while the app serves. Each full collection walked them all and held the event loop for ~200 ms, every stream
    and every new turn waiting (the benchmark's first-token p99 at 100 streams); with them frozen it walks only
    what serving allocates (~18 ms). Unfrozen on shutdown, so that a process that builds apps again (the tests)
    does not keep every earlier app's cycles."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def create_app(settings: Settings | None = None, fallbacks: Fallbacks | None = None) -> FastAPI:
    """The app; `fallbacks` stand in for unset storage URLs and model (see `runtime.Fallbacks`)."""
    settings = settings or Settings()
    instruments = Instruments.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Whoever configured logging (uvicorn's defaults, `copilot serve`), no token reaches a log line.
        install_redaction()
        for warning in startup_warnings(settings):
            log.warning("%s", warning)
        async with open_runtime(settings, fallbacks, instruments) as runtime, _startup_heap_frozen():
            app.state.runtime = runtime
            if instruments.metrics is not None and settings.metrics_port is not None:
                with serve_metrics(instruments.metrics, settings.host, settings.metrics_port):
                    yield
            else:
                yield

    # FastAPI's own /docs and /redoc load their assets from a CDN: `backend.api.docs` serves them offline instead.
    app = FastAPI(title="copilot-chat", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimit, max_bytes=settings.max_header_bytes)
    # Outermost: refusals by the limits above are counted, carry a request id and are traced too.
    app.add_middleware(ObserveRequests, metrics=instruments.metrics, tracing=instruments.tracing)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(mcp_servers.router)
    app.include_router(transcript.router)
    app.include_router(ui_messages.router)
    app.include_router(info.router)
    app.include_router(chat.router)
    app.include_router(agui.router)
    app.include_router(tool_calls.router)
    app.include_router(admin.router)
    app.include_router(ws.router)
    app.include_router(operations.router)
    app.include_router(panel.router)
    app.include_router(docs.router)
    app.include_router(metrics.router)
    app.mount("/static", panel.static_assets(), name="static")
    app.mount(docs.ASSETS_URL, docs.docs_assets(), name="docs-assets")

    @app.exception_handler(CopilotError)
    async def copilot_error(_: Request, exc: CopilotError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if exc.status_code == 401 else {}
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers={**headers, **exc.headers()})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems[:5])
        body = {"error": {"code": "invalid_request", "message": summary, "details": problems}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    return app


async def drain(app: FastAPI) -> None:
    """Wind the app down on SIGTERM (`Runtime.drain`); the server stops once this returns. A no-op before the
    lifespan has started."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is not None:
        await runtime.drain()
