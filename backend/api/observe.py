"""The pure ASGI middleware that makes each request observable: its id, its metrics, its span.

- **Request id.** Taken from `X-Request-ID` when it is a plain token (letters, digits, `._:-`, at most 128), else
  made up; bound for the request's logs (`observability/logs.py`) and sent back in the response's `X-Request-ID`
  (a WebSocket's accept carries it too). Ids bound here or below (user, session) are reset when the request ends,
  whatever server runs the app.
- **Metrics.** Requests by method, route template (never the raw path: `unmatched` when no route matched) and status;
  the time to the response head (a stream's head leaves at once: its length is the turn's, measured elsewhere);
  SSE responses and accepted WebSockets held open.
- **Span.** A server span per request (its parent taken from an incoming W3C `traceparent`), current for the
  request's task, so the turn it starts and the storage calls it makes nest under it. Probes, scrapes and static
  assets make no span.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.observability.logs import request_scope
from backend.observability.metrics import Metrics
from backend.observability.tracing import Tracing

log = logging.getLogger("copilot.http")

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_UNTRACED = ("/health", "/metrics", "/static/", "/docs-assets/", "/favicon.ico")
_PROPAGATOR = TraceContextTextMapPropagator()


def _incoming_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER and _VALID_ID.fullmatch(value):
            return str(value.decode())
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObserveRequests:
    def __init__(self, app: ASGIApp, *, metrics: Metrics | None, tracing: Tracing) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope)
        with request_scope(request_id):
            if self.tracing.enabled and not scope["path"].startswith(_UNTRACED):
                await self._traced(scope, receive, send, request_id)
            else:
                await self._observed(scope, receive, send, request_id, None)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        method = scope.get("method", "WS")
        span = self.tracing.tracer.start_span(
            method,
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"], "copilot.request_id": request_id},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self._observed(scope, receive, send, request_id, span)
        except Exception as e:
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            route = _route(scope)
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.end()
            otel_context.detach(token)

    async def _observed(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, span: trace.Span | None
    ) -> None:
        metrics = self.metrics
        started = time.perf_counter()
        status = 500  # an exception before the head is answered by the server's error middleware, outside this one
        streaming: str | None = None
        started_head = False

        async def observed_send(message: Message) -> None:
            nonlocal status, streaming, started_head
            kind = message["type"]
            if kind == "http.response.start":
                started_head = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id.encode())]
                if metrics is not None:
                    method, route = scope["method"], _route(scope)
                    metrics.child(metrics.http_duration, method, route).observe(time.perf_counter() - started)
                    if _is_event_stream(message):
                        streaming = "sse"
                        metrics.child(metrics.streams_open, "sse").inc()
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
            elif kind == "websocket.accept":
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id.encode())]
                if metrics is not None:
                    streaming = "websocket"
                    metrics.child(metrics.streams_open, "websocket").inc()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            if scope["type"] != "http" or status != 500 or started_head:
                raise
            # Answered here rather than by Starlette's outermost error middleware, so that the traceback is logged
            # with the request's ids and the answer carries its X-Request-ID.
            log.exception("unhandled error in %s %s", scope["method"], _route(scope))
            await _internal_error(observed_send, request_id)
        finally:
            if metrics is not None:
                if streaming is not None:
                    metrics.child(metrics.streams_open, streaming).dec()
                if scope["type"] == "http":
                    metrics.child(metrics.http_requests, scope["method"], _route(scope), str(status)).inc()


async def _internal_error(send: Send, request_id: str) -> None:
    body = orjson.dumps(
        {"error": {"code": "internal_error", "message": f"Something went wrong (request {request_id})."}}
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_event_stream(message: Message) -> bool:
    headers: Any = message.get("headers", ())
    return any(name == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)
