"""An OpenAI-compatible mock model server for tests, benchmarks and the offline demo.

The reply to ``POST /v1/chat/completions`` is chosen by markers in the last user message,
``[[mock:<scenario> key=value ...]]`` (docs/mock-llm.md lists them). Without a marker the server
answers as the offline demo model. When the last message is a ``tool`` message the model is being
called back with tool results, and it answers with text that quotes them.

``MockLLM`` is the ASGI app together with its state, ``MockLLMServer`` runs one in the current
event loop for tests, and ``run`` serves one from the command line (``copilot mock-llm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODEL_ID = "mock-model"
MAX_RECORDED_REQUESTS = 1000
DEFAULT_TEXT_TOKENS = 20

_MARKER_OPEN = re.compile(r"\[\[mock:(\w+)")
_PARAM_OR_CLOSE = re.compile(r"\s*(?:(\]\])|(\w+)=)")
_BARE_VALUE = re.compile(r"[^\s\]]+")
_JSON = json.JSONDecoder()
_TOKEN = re.compile(r"\s*\S+|\s+")
_DELTA_SLOT = "@@delta@@"
_DONE = b"data: [DONE]\n\n"
_FILLER = tuple(orjson.dumps(f" {w}") for w in ("ipsum", "dolor", "sit", "amet", "consectetur", "elit", "lorem"))


class MarkerError(ValueError):
    """A ``[[mock:...]]`` marker that cannot be parsed, has a bad value or names no scenario."""


@dataclass(frozen=True)
class Marker:
    """One ``[[mock:name key=value ...]]`` directive from the last user message."""

    name: str
    params: dict[str, Any]
    text: str
    """The marker as written; it is the counter key when ``times`` is given without ``key``."""

    def number(self, key: str, default: float) -> float:
        value = self.params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise MarkerError(f"{self.text}: {key} must be a non-negative number")
        return float(value)

    def count(self, key: str, default: int) -> int:
        value = self.params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MarkerError(f"{self.text}: {key} must be a non-negative integer")
        return value


def parse_markers(text: str) -> list[Marker]:
    """Every ``[[mock:...]]`` marker in ``text``, in order of appearance.

    A value starting with ``{``, ``[`` or ``"`` is read as JSON (so it may hold spaces and ``]]``);
    any other value runs to the next space or ``]`` and becomes an int or float if it looks like one.
    """
    markers = []
    pos = 0
    while (opening := _MARKER_OPEN.search(text, pos)) is not None:
        pos = opening.end()
        params: dict[str, Any] = {}
        while (token := _PARAM_OR_CLOSE.match(text, pos)) is not None and not token.group(1):
            params[token.group(2)], pos = _parse_value(text, token.end())
        if token is None:
            raise MarkerError(f"malformed mock marker: {text[opening.start() : pos + 20]!r}")
        pos = token.end()
        markers.append(Marker(opening.group(1), params, text[opening.start() : pos]))
    return markers


def _parse_value(text: str, pos: int) -> tuple[Any, int]:
    if text.startswith(("{", "[", '"'), pos):
        try:
            return _JSON.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise MarkerError(f"bad JSON value in mock marker: {e}") from e
    bare = _BARE_VALUE.match(text, pos)
    if bare is None:
        raise MarkerError(f"missing value in mock marker: {text[pos - 20 : pos + 20]!r}")
    for number in (int, float):
        with contextlib.suppress(ValueError):
            return number(bare.group()), bare.end()
    return bare.group(), bare.end()


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class _Plan:
    """What one completion contains and how it is delivered; scenarios fill it in."""

    delay: float
    """Seconds between chunks."""
    content: list[bytes] = field(default_factory=list)
    """Text tokens, each already encoded as a JSON string literal."""
    tool_calls: list[_ToolCall] = field(default_factory=list)
    cut_after: int | None = None
    """Drop the connection after this many chunks."""
    stall_after: int | None = None
    """Go silent for ``stall_seconds`` after this many chunks."""
    stall_seconds: float = 0.0
    answered: bool = False
    """Whether a ``text`` or ``tool`` marker chose the reply (which may then be empty)."""

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass
class _Turn:
    """What a scenario sees of one request, and the plan it adds to."""

    seq: int
    model: str
    prompt_tokens: int
    default_tokens: int | None
    plan: _Plan


Scenario = Callable[[_Turn, Marker], Response | None]
"""Adds to ``turn.plan``, or returns an error response that ends the request."""


def _text(turn: _Turn, marker: Marker) -> None:
    """Plain text: the given ``content``, or ``tokens`` filler words (default: the server's default)."""
    turn.plan.answered = True
    if "content" in marker.params:
        turn.plan.content += _encode(str(marker.params["content"]))
    else:
        count = marker.count("tokens", turn.default_tokens or DEFAULT_TEXT_TOKENS)
        turn.plan.content += [b'"Lorem"', *_filler(count - 1)][:count]


def _tool(turn: _Turn, marker: Marker, *, malformed: bool = False) -> None:
    """One tool call to ``name`` (default get_current_time) with JSON ``args`` (default ``{}``).

    The arguments stream in several fragments; repeat the marker for parallel calls.
    """
    args = marker.params.get("args", {})
    arguments = args if isinstance(args, str) else orjson.dumps(args).decode()
    if malformed:
        arguments = arguments[:-1]
    turn.plan.answered = True
    call_id = f"call_mock_{turn.seq}_{len(turn.plan.tool_calls)}"
    turn.plan.tool_calls.append(_ToolCall(call_id, str(marker.params.get("name", "get_current_time")), arguments))


def _bad_tool_args(turn: _Turn, marker: Marker) -> None:
    """Like ``tool``, but the arguments are invalid JSON (their last character is cut off).

    With ``times=N`` the call is malformed only N times; afterwards it behaves like ``tool``.
    """
    _tool(turn, marker, malformed=True)


def _rate_limit(turn: _Turn, marker: Marker) -> Response:
    """HTTP 429 ``rate_limit_exceeded``; ``retry_after`` seconds (default 1) go into the retry headers."""
    seconds = marker.number("retry_after", 1)
    message = f"Rate limit reached for {turn.model} on requests per min (RPM). Please try again in {seconds:g}s."
    headers = {"retry-after": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}
    return _error(429, message, "requests", "rate_limit_exceeded", headers=headers)


def _server_error(turn: _Turn, marker: Marker) -> Response:
    """HTTP ``status`` (default 500) with OpenAI's server-error body."""
    status = marker.count("status", 500)
    if not 400 <= status <= 599:
        raise MarkerError(f"{marker.text}: status must be an HTTP error status")
    return _error(status, "The server had an error while processing your request. Sorry about that!", "server_error")


def _region_block(turn: _Turn, marker: Marker) -> Response:
    """HTTP 403 ``unsupported_country_region_territory``, as OpenAI answers from a blocked region."""
    message = "Country, region, or territory not supported"
    return _error(403, message, "request_forbidden", "unsupported_country_region_territory")


def _context_length(turn: _Turn, marker: Marker) -> Response:
    """HTTP 400 ``context_length_exceeded`` for a model with a window of ``limit`` tokens (default 128000)."""
    limit = marker.count("limit", 128000)
    message = (
        f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
        f"{limit + turn.prompt_tokens} tokens. Please reduce the length of the messages."
    )
    return _error(400, message, "invalid_request_error", "context_length_exceeded", param="messages")


def _cut(turn: _Turn, marker: Marker) -> None:
    """Drop the connection after ``after`` chunks (default 3): no finish chunk, no ``[DONE]``."""
    turn.plan.cut_after = marker.count("after", 3)


def _stall(turn: _Turn, marker: Marker) -> None:
    """Send ``after`` chunks (default 2), go silent for ``seconds`` (default 30), then carry on."""
    turn.plan.stall_after = marker.count("after", 2)
    turn.plan.stall_seconds = marker.number("seconds", 30)


SCENARIOS: Mapping[str, Scenario] = {
    "text": _text,
    "tool": _tool,
    "bad_tool_args": _bad_tool_args,
    "rate_limit": _rate_limit,
    "server_error": _server_error,
    "region_block": _region_block,
    "context_length": _context_length,
    "cut": _cut,
    "stall": _stall,
}


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in OpenAI's JSON shape; the SDK picks its exception class from the status."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _encode(text: str) -> list[bytes]:
    """``text`` split into word tokens (each with its leading space), JSON-encoded."""
    return [orjson.dumps(token) for token in _TOKEN.findall(text)]


def _filler(count: int) -> list[bytes]:
    """``count`` filler tokens from a pre-encoded cycle, so long benchmark replies encode nothing."""
    return list(itertools.islice(itertools.cycle(_FILLER), max(count, 0)))


def _message_text(content: object) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _demo_answer(user_text: str, markers: Iterable[Marker]) -> str:
    """The offline demo reply: says what it is and echoes the start of the user's message."""
    for marker in markers:
        user_text = user_text.replace(marker.text, " ")
    echo = " ".join(user_text.split())
    echo = echo if len(echo) <= 80 else echo[:79] + "…"
    said = f'You said: "{echo}".' if echo else "Your message had no text."
    return (
        f"Hi! I'm the copilot-chat demo model ({MODEL_ID}), so this is a canned offline reply. "
        f"{said} Connect a real model to get real answers."
    )


def _tool_results_answer(messages: list[dict[str, Any]]) -> str:
    """The reply once tools have run: quotes each trailing ``tool`` message, naming its tool."""
    results = list(itertools.takewhile(lambda m: m.get("role") == "tool", reversed(messages)))[::-1]
    names = {
        call.get("id"): call.get("function", {}).get("name")
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
        if isinstance(call, dict)
    }
    quoted = " ".join(
        f"{names.get(r.get('tool_call_id')) or 'The tool'} returned: {_message_text(r.get('content'))}" for r in results
    )
    return f"Here is what the tools told me. {quoted}"


class _Envelope:
    """Pre-encoded pieces of one completion's chunks, so a text token costs one bytes join."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        chunk = self.chunk([{"index": 0, "delta": _DELTA_SLOT, "logprobs": None, "finish_reason": None}])
        # rsplit: the model name comes first and may contain anything, even the slot text.
        head, tail = chunk.rsplit(orjson.dumps(_DELTA_SLOT), 1)
        self._head, self._tail = head, tail
        self._text_head, self._text_tail = head + b'{"content":', b"}" + tail

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def delta(self, delta: dict[str, Any]) -> bytes:
        return b"".join((self._head, orjson.dumps(delta), self._tail))

    def text(self, token: bytes) -> bytes:
        return b"".join((self._text_head, token, self._text_tail))


def _fragments(arguments: str) -> list[str]:
    """Tool arguments cut into pieces of up to 8 characters, at least two when possible."""
    size = max(1, min(8, len(arguments) // 2))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _tool_call_deltas(calls: list[_ToolCall]) -> Iterator[dict[str, Any]]:
    """Each call's header (index, id, name), then argument fragments interleaved across indexes."""
    for index, call in enumerate(calls):
        function = {"name": call.name, "arguments": ""}
        yield {"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]}
    for pieces in itertools.zip_longest(*(_fragments(call.arguments) for call in calls)):
        for index, piece in enumerate(pieces):
            if piece is not None:
                yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def _usage(prompt_tokens: int, plan: _Plan) -> dict[str, int]:
    completion = len(plan.content) + sum(len(_fragments(call.arguments)) for call in plan.tool_calls)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _sse_chunks(plan: _Plan, env: _Envelope, usage: dict[str, int] | None) -> Iterator[bytes]:
    """The whole stream: role, text tokens, tool-call deltas, finish, optional usage, ``[DONE]``."""
    yield env.delta({"role": "assistant", "content": None if plan.tool_calls and not plan.content else ""})
    for token in plan.content:
        yield env.text(token)
    for delta in _tool_call_deltas(plan.tool_calls):
        yield env.delta(delta)
    yield env.chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": plan.finish_reason}])
    if usage is not None:
        yield env.chunk([], usage)
    yield _DONE


def _completion(plan: _Plan, env: _Envelope, usage: dict[str, int]) -> bytes:
    """The non-streaming ``chat.completion`` body."""
    content = "".join(orjson.loads(b"[" + b",".join(plan.content) + b"]")) if plan.content else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in plan.tool_calls
        ]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
    body = {
        "id": env.id,
        "object": "chat.completion",
        "created": env.created,
        "model": env.model,
        "choices": [choice],
        "usage": usage,
    }
    return orjson.dumps(body)


def _json_reply(completion: bytes, plan: _Plan, headers: Mapping[str, str]) -> Response:
    """The non-streaming reply; a cut or stall lands in the middle of its JSON body."""
    if plan.cut_after is None and plan.stall_after is None:
        return Response(completion, headers=headers, media_type="application/json")
    halves = (completion[: len(completion) // 2], completion[len(completion) // 2 :])
    faults = replace(
        plan,
        delay=0.0,
        cut_after=None if plan.cut_after is None else 1,
        stall_after=None if plan.stall_after is None else 1,
    )
    return _ChunkStream(halves, faults, headers, "application/json")


class _StreamCut(Exception):
    """Raised after the response has started: the ASGI server then drops the connection."""


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _ChunkStream(Response):
    """Sends pre-encoded chunks, one write each, paced and faulted by the plan.

    It stops as soon as the client goes away, in the middle of a stall too, so that abandoned
    benchmark streams and timed-out stall tests cost nothing more.
    """

    def __init__(self, chunks: Iterable[bytes], plan: _Plan, headers: Mapping[str, str], media_type: str) -> None:
        self.chunks = chunks
        self.plan = plan
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await self._send_chunks(send, gone)
        finally:
            gone.cancel()

    async def _send_chunks(self, send: Send, gone: asyncio.Future[None]) -> None:
        plan = self.plan
        for sent, chunk in enumerate(self.chunks):
            if sent == plan.cut_after:
                raise _StreamCut
            if sent == plan.stall_after:
                await asyncio.wait([gone], timeout=plan.stall_seconds)
            elif sent and plan.delay:
                await asyncio.sleep(plan.delay)
            if gone.done():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class MockLLM:
    """The mock model's ASGI app and its state: recorded requests and per-key marker counters.

    ``default_tokens`` is the length of ``text`` replies without ``tokens``; unmarked demo replies
    are padded or cut to it. ``default_delay_ms`` is the pause between chunks unless a marker
    says ``delay_ms``.
    """

    def __init__(
        self,
        *,
        default_tokens: int | None = None,
        default_delay_ms: float = 0.0,
        max_recorded: int = MAX_RECORDED_REQUESTS,
    ) -> None:
        self.default_tokens = default_tokens
        self.default_delay = default_delay_ms / 1000
        self._recorded: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._counters: dict[tuple[str, str], int] = {}
        self._seq = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self._get_model, methods=["GET"]),
                Route("/_mock/requests", self._get_requests, methods=["GET"]),
                Route("/_mock/requests", self._reset_requests, methods=["DELETE"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            # The hot path skips Starlette's middleware, which would wrap the send of every chunk.
            response = await self._chat_completions(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests received, oldest first."""
        return list(self._recorded)

    def reset(self) -> None:
        """Forget the recorded requests and every marker counter."""
        self._recorded.clear()
        self._counters.clear()

    async def _list_models(self, request: Request) -> Response:
        """List the mock model; any other model name is accepted as well."""
        return Response(orjson.dumps({"object": "list", "data": [_model(MODEL_ID)]}), media_type="application/json")

    async def _get_model(self, request: Request) -> Response:
        """Describe any model name as if it existed."""
        return Response(orjson.dumps(_model(request.path_params["model_id"])), media_type="application/json")

    async def _get_requests(self, request: Request) -> Response:
        """The recorded chat completion request bodies, oldest first."""
        return Response(orjson.dumps(self.requests), media_type="application/json")

    async def _reset_requests(self, request: Request) -> Response:
        """Forget recorded requests and marker counters."""
        self.reset()
        return Response(status_code=204)

    async def _chat_completions(self, request: Request) -> Response:
        """Answer a chat completion as the markers in its last user message say."""
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not messages or not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return _error(400, "'messages' must be a non-empty list of objects.", "invalid_request_error")
        self._recorded.append(body)
        seq = next(self._seq)
        model = str(body.get("model") or MODEL_ID)
        prompt_tokens = max(1, len(raw) // 4)
        users = [m for m in messages if m.get("role") == "user"]
        user_text = _message_text(users[-1].get("content")) if users else ""
        turn = _Turn(seq, model, prompt_tokens, self.default_tokens, _Plan(delay=self.default_delay))
        try:
            markers = parse_markers(user_text)
            if (failure := self._run_scenarios(turn, markers)) is not None:
                return failure
        except MarkerError as e:
            return _error(400, str(e), "invalid_request_error", "invalid_mock_marker")

        plan = turn.plan
        if messages[-1].get("role") == "tool":
            plan.content, plan.tool_calls = _encode(_tool_results_answer(messages)), []
        elif not plan.answered:
            plan.content = _encode(_demo_answer(user_text, markers))
            if self.default_tokens is not None:
                plan.content = (plan.content + _filler(self.default_tokens))[: self.default_tokens]

        env = _Envelope(f"chatcmpl-mock-{seq}", model)
        headers = {"x-request-id": f"req_mock_{seq}"}
        if body.get("stream"):
            stream_options = body.get("stream_options")
            wants_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
            chunks = _sse_chunks(plan, env, _usage(prompt_tokens, plan) if wants_usage else None)
            headers["cache-control"] = "no-cache"
            return _ChunkStream(chunks, plan, headers, "text/event-stream")
        return _json_reply(_completion(plan, env, _usage(prompt_tokens, plan)), plan, headers)

    def _run_scenarios(self, turn: _Turn, markers: list[Marker]) -> Response | None:
        """Apply each marker in order; the first error response wins."""
        for marker in markers:
            scenario = SCENARIOS.get(marker.name)
            if scenario is None:
                raise MarkerError(f"unknown mock scenario {marker.name!r}; known: {', '.join(SCENARIOS)}")
            if not self._active(marker):
                if marker.name != "bad_tool_args":
                    continue
                scenario = _tool  # a malformed call that has used up its `times` comes back well-formed
            if "delay_ms" in marker.params:
                turn.plan.delay = marker.number("delay_ms", 0) / 1000
            if (failure := scenario(turn, marker)) is not None:
                return failure
        return None

    def _active(self, marker: Marker) -> bool:
        """Whether the marker applies to this request: always, or with ``times=N`` the first N times per key."""
        if "times" not in marker.params:
            return True
        key = (marker.name, str(marker.params.get("key", marker.text)))
        seen = self._counters.get(key, 0)
        self._counters[key] = seen + 1
        return seen < marker.count("times", 0)


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "copilot-chat"}


class _HideStreamCuts(logging.Filter):
    """Keeps the deliberate ``cut`` scenario out of uvicorn's "Exception in ASGI application" log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _StreamCut))


def _hide_stream_cuts() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideStreamCuts) for f in logger.filters):
        logger.addFilter(_HideStreamCuts())


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Ctrl+C belongs to the host process (pytest, a benchmark), not to the embedded server.
        yield


class MockLLMServer:
    """Serves a ``MockLLM`` on a free 127.0.0.1 port in the current event loop.

    Use it as ``async with MockLLMServer() as llm`` and point the SDK at ``llm.base_url``.
    """

    def __init__(
        self, mock: MockLLM | None = None, *, default_tokens: int | None = None, default_delay_ms: float = 0.0
    ) -> None:
        self.mock = (
            mock if mock is not None else MockLLM(default_tokens=default_tokens, default_delay_ms=default_delay_ms)
        )
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests received, oldest first."""
        return self.mock.requests

    async def __aenter__(self) -> Self:
        _hide_stream_cuts()
        # Binding the socket here lets the kernel pick a free port with no race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.mock, log_config=None, lifespan="off", timeout_graceful_shutdown=1)
        server = self._server = _EmbeddedServer(config)
        task = self._task = asyncio.create_task(server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the mock LLM server stopped while starting")
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


def run(
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    default_tokens: int | None = None,
    default_delay_ms: float = 0.0,
    log_level: str = "info",
) -> None:
    """Serve the mock model until interrupted (``copilot mock-llm``); see ``MockLLM`` for the defaults."""
    mock = MockLLM(default_tokens=default_tokens, default_delay_ms=default_delay_ms)
    config = uvicorn.Config(mock, host=host, port=port, log_level=log_level, access_log=False, lifespan="off")
    _hide_stream_cuts()  # after Config, which applies uvicorn's logging config
    uvicorn.Server(config).run()
