"""Loopback stand-ins for Langfuse, PostHog and an OpenTelemetry collector that the real SDKs talk to over HTTP.

`FakeLangfuse` serves prompt management (`GET /api/public/v2/prompts/{name}` with label/version resolution, the
server's error shapes) and accepts OTLP trace exports (`POST /api/public/otel/v1/traces`, gzip + protobuf),
decoding the spans. `FakePostHog` accepts `POST /batch/`. `FakeCollector` is a collector's OTLP/HTTP traces
receiver (`POST /v1/traces`). The first two check credentials the way the real services do,
record every request, and can be switched to failing (`down = True`: 503) to play an outage.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PROMPTS_PREFIX = "/api/public/v2/prompts/"
TRACES_PATH = "/api/public/otel/v1/traces"
COLLECTOR_TRACES_PATH = "/v1/traces"

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    """What the fake answered."""


class _LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 with a free port; subclasses implement `route`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.down = False
        """When set, every request gets a 503 (the service is having an outage)."""
        self.delay_seconds = 0.0
        """Each request waits this long before it is answered (a slow service)."""
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("content-encoding") == "gzip":
                    raw = gzip.decompress(raw)
                parts = urlsplit(self.path)
                rec = Recorded(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    raw,
                )
                with owner._lock:
                    owner.requests.append(rec)
                if owner.delay_seconds:
                    time.sleep(owner.delay_seconds)
                if owner.down:
                    status, headers, body = _json(503, {"message": "unavailable", "error": "ServiceUnavailable"})
                else:
                    status, headers, body = owner.route(rec)
                rec.status = status
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def route(self, rec: Recorded) -> Reply:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def recorded(self, predicate: Callable[[Recorded], bool]) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]


def _json(status: int, body: Any) -> Reply:
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


class FakeLangfuse(_LoopbackServer):
    def __init__(self, public_key: str | None = None, secret_key: str = "sk-lf-test") -> None:
        super().__init__()
        # Unique per server: the SDK keeps one client per public key per process.
        self.public_key = public_key or f"pk-lf-{uuid.uuid4()}"
        self.secret_key = secret_key
        self._auth = "Basic " + base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        self._versions: dict[str, list[dict[str, Any]]] = {}

    def publish(self, name: str, prompt: str | list[dict[str, Any]], labels: tuple[str, ...] = ("production",)) -> int:
        """What an admin does in the UI: a new version, which takes `labels` (and `latest`) from older ones."""
        with self._lock:
            versions = self._versions.setdefault(name, [])
            moved = {*labels, "latest"}
            for row in versions:
                row["labels"] = [label for label in row["labels"] if label not in moved]
            version = len(versions) + 1
            versions.append(
                {
                    "id": str(uuid.uuid4()),
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "updatedAt": "2026-01-01T00:00:00.000Z",
                    "projectId": "project-1",
                    "createdBy": "API",
                    "name": name,
                    "version": version,
                    "type": "text" if isinstance(prompt, str) else "chat",
                    "prompt": prompt,
                    "config": {},
                    "labels": sorted(moved),
                    "tags": [],
                    "commitMessage": None,
                }
            )
            return version

    def prompt_fetches(self) -> list[Recorded]:
        return self.recorded(lambda r: r.method == "GET" and r.path.startswith(PROMPTS_PREFIX))

    def route(self, rec: Recorded) -> Reply:
        if rec.headers.get("authorization") != self._auth:
            return _json(401, {"message": "Invalid credentials", "error": "UnauthorizedError"})
        if rec.method == "POST" and rec.path == TRACES_PATH:
            ExportTraceServiceRequest.FromString(rec.body)  # a body that does not parse fails the test's decode too
            return 200, {"content-type": "application/x-protobuf"}, b""
        if rec.method == "GET" and rec.path.startswith(PROMPTS_PREFIX):
            name = unquote(rec.path[len(PROMPTS_PREFIX) :])
            version = rec.query.get("version", [None])[0]
            label = rec.query.get("label", [None])[0]
            if version is not None and label is not None:
                return _json(400, {"message": "Cannot specify both version and label", "error": "ValidationError"})
            with self._lock:
                rows = list(self._versions.get(name, []))
            if version is not None:
                match = [r for r in rows if r["version"] == int(version)]
            else:
                match = [r for r in rows if (label or "production") in r["labels"]]
            if not match:
                message = f"Prompt not found: '{name}' with label '{label or 'production'}'"
                return _json(404, {"message": message, "error": "LangfuseNotFoundError"})
            return _json(200, match[-1])
        return _json(404, {"message": "not found", "error": "NotFound"})

    def spans(self) -> list[Span]:
        """Every span exported so far, decoded."""
        return _decoded(self.recorded(lambda r: r.method == "POST" and r.path == TRACES_PATH and r.status == 200))


class FakeCollector(_LoopbackServer):
    """An OpenTelemetry collector's OTLP/HTTP traces receiver (`POST /v1/traces`, protobuf, gzip or not)."""

    def route(self, rec: Recorded) -> Reply:
        if rec.method == "POST" and rec.path == COLLECTOR_TRACES_PATH:
            ExportTraceServiceRequest.FromString(rec.body)  # a body that does not decode fails the export
            return 200, {"content-type": "application/x-protobuf"}, ExportTraceServiceResponse().SerializeToString()
        return _json(404, {"message": "not found"})

    def spans(self) -> list[Span]:
        return _decoded(self.recorded(lambda r: r.path == COLLECTOR_TRACES_PATH and r.status == 200))


def _decoded(exports: list[Recorded]) -> list[Span]:
    out = []
    for rec in exports:
        request = ExportTraceServiceRequest.FromString(rec.body)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    out.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex() or None,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            scope=scope_spans.scope.name,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            resource=resource,
                            error=s.status.code == s.status.STATUS_CODE_ERROR,
                        )
                    )
    return out


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start_ns: int
    end_ns: int
    scope: str
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    error: bool = False

    @property
    def type(self) -> Any:
        return self.attributes.get("langfuse.observation.type")

    def json(self, key: str) -> Any:
        return json.loads(self.attributes[key])


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class FakePostHog(_LoopbackServer):
    def __init__(self, api_key: str = "phc_test") -> None:
        super().__init__()
        self.api_key = api_key

    def route(self, rec: Recorded) -> Reply:
        if rec.method == "POST" and rec.path == "/batch/":
            body = json.loads(rec.body)
            if body.get("api_key") != self.api_key:
                return _json(401, {"type": "authentication_error", "code": "invalid_api_key"})
            return _json(200, {"status": "Ok"})
        return _json(404, {"type": "not_found"})

    def events(self) -> list[dict[str, Any]]:
        """Events delivered so far (requests answered with an error are not delivered)."""
        batches = self.recorded(lambda r: r.method == "POST" and r.path == "/batch/" and r.status == 200)
        return [event for r in batches for event in json.loads(r.body)["batch"]]
