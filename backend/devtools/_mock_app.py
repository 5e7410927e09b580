"""``MockLLM``, the mock model's ASGI app: its routes, its state, and how one chat completion is answered.

A request's markers pick scenarios (``_mock_scenarios``) that fill in a plan, the unmarked cases
get the demo's reply (``_mock_demo``) or the tool-results reply here, and ``_mock_wire`` encodes and
sends the plan.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backend.devtools import _mock_demo, _mock_responses
from backend.devtools._mock_markers import Marker, MarkerError, parse_markers
from backend.devtools._mock_scenarios import SCENARIOS, Turn
from backend.devtools._mock_wire import (
    ChunkStream,
    Envelope,
    Plan,
    ToolCall,
    completion_body,
    encode_text,
    error_response,
    fail_after,
    filler,
    json_reply,
    sse_chunks,
    stream_error_chunk,
    token_usage,
)

MODEL_ID = "mock-model"
MAX_RECORDED_REQUESTS = 1000


def _message_text(content: object) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return "".join(p for p in parts if isinstance(p, str))
    return ""


async def _generation_time(plan: Plan) -> None:
    """Before a non-streamed answer: as long as its stream would have taken, when a marker paced it (the server's
    default pace leaves non-streamed answers at once)."""
    if plan.paced and plan.delay:
        await asyncio.sleep(plan.delay * max(1, len(plan.content) + len(plan.reasoning)))


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
        self._max_recorded = max_recorded
        self._stored: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        """Responses API: each stored response's whole conversation (its input and its reply) as chat messages."""
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
        elif scope["type"] == "http" and scope["path"] == "/v1/responses" and scope["method"] == "POST":
            response = await self._responses(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion and Responses requests received, oldest first."""
        return list(self._recorded)

    def reset(self) -> None:
        """Forget the recorded requests, every marker counter and the stored responses."""
        self._recorded.clear()
        self._counters.clear()
        self._stored.clear()

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
            return error_response(400, "The request body is not valid JSON.", "invalid_request_error")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not messages or not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return error_response(400, "'messages' must be a non-empty list of objects.", "invalid_request_error")
        self._recorded.append(body)
        seq = next(self._seq)
        planned = self._plan(seq, body, messages, body.get("tools") or [], len(raw))
        if isinstance(planned, Response):
            return planned
        plan, prompt_tokens = planned
        env = Envelope(f"chatcmpl-mock-{seq}", str(body.get("model") or MODEL_ID))
        headers = {"x-request-id": f"req_mock_{seq}"}
        if body.get("stream"):
            stream_options = body.get("stream_options")
            wants_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
            chunks = sse_chunks(plan, env, token_usage(prompt_tokens, plan) if wants_usage else None)
            if plan.stream_error is not None:  # the hot path streams the chunks as they are
                chunks = fail_after(chunks, plan.stream_error, stream_error_chunk)
            headers["cache-control"] = "no-cache"
            return ChunkStream(chunks, plan, headers, "text/event-stream")
        await _generation_time(plan)
        return json_reply(completion_body(plan, env, token_usage(prompt_tokens, plan)), plan, headers)

    async def _responses(self, request: Request) -> Response:
        """Answer a Responses API request as the markers in its last user input message say."""
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error_response(400, "The request body is not valid JSON.", "invalid_request_error")
        messages = _mock_responses.chat_messages(body) if isinstance(body, dict) else None
        if not messages:
            return error_response(
                400, "'input' must be a string or a non-empty list of items.", "invalid_request_error"
            )
        self._recorded.append(body)
        seq = next(self._seq)
        previous = body.get("previous_response_id")
        if previous is not None:
            if previous not in self._stored:
                return error_response(
                    400,
                    f"Previous response with id '{previous}' not found.",
                    "invalid_request_error",
                    "previous_response_not_found",
                    param="previous_response_id",
                )
            messages = [*self._stored[previous], *messages]
        planned = self._plan(seq, body, messages, _mock_responses.chat_tools(body), len(raw), chained=bool(previous))
        if isinstance(planned, Response):
            return planned
        plan, prompt_tokens = planned
        env = _mock_responses.ResponseEnvelope(
            f"resp_mock_{seq}", str(body.get("model") or MODEL_ID), previous_response_id=previous
        )
        if body.get("store", True):  # the Responses API stores by default
            self._stored[env.id] = [*messages, _mock_responses.reply_message(plan)]
            while len(self._stored) > self._max_recorded:
                self._stored.popitem(last=False)
        usage = _mock_responses.usage(prompt_tokens, plan)
        headers = {"x-request-id": f"req_mock_{seq}"}
        if body.get("stream"):
            events = _mock_responses.sse_events(plan, env, usage)
            events = fail_after(events, plan.stream_error, lambda error: _mock_responses.error_event(error, env))
            headers["cache-control"] = "no-cache"
            return ChunkStream(events, plan, headers, "text/event-stream")
        await _generation_time(plan)
        return json_reply(_mock_responses.response_body(plan, env, usage), plan, headers)

    def _plan(
        self,
        seq: int,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        tools: list[Any],
        size: int,
        *,
        chained: bool = False,
    ) -> tuple[Plan, int] | Response:
        """What to answer to `messages` (chat format), whichever API asked: the plan and the prompt's tokens, or
        an error response."""
        model = str(body.get("model") or MODEL_ID)
        prompt_tokens = max(1, size // 4)
        users = [m for m in messages if m.get("role") == "user"]
        user_text = _message_text(users[-1].get("content")) if users else ""
        turn = Turn(seq, model, prompt_tokens, self.default_tokens, Plan(delay=self.default_delay), chained)
        called_back = bool(messages) and messages[-1].get("role") == "tool"
        try:
            markers = parse_markers(user_text)
            if (failure := self._run_scenarios(turn, markers, called_back=called_back)) is not None:
                return failure
        except MarkerError as e:
            return error_response(400, str(e), "invalid_request_error", "invalid_mock_marker")

        plan = turn.plan
        if self.default_tokens is not None:  # benchmark mode: every unmarked reply is the same number of tokens
            if messages[-1].get("role") == "tool":
                plan.content, plan.tool_calls = encode_text(_tool_results_answer(messages)), []
            elif not plan.answered:
                demo = encode_text(_demo_answer(user_text, markers))
                plan.content = (demo + filler(self.default_tokens))[: self.default_tokens]
        elif markers:
            if called_back and not plan.tool_calls:
                plan.content = encode_text(_tool_results_answer(messages))
            elif not plan.answered:
                plan.content = encode_text(_demo_answer(user_text, markers))
        else:
            self._plan_demo(plan, messages, tools, user_text)
        return plan, prompt_tokens

    def _plan_demo(self, plan: Plan, messages: list[dict[str, Any]], tools: list[Any], user_text: str) -> None:
        """An unmarked request, answered as the demo model (``_mock_demo``): a title, a tool's result told, a tool
        call for a request it understands, or text."""
        offered = [
            tool.get("function", {}).get("name")
            for tool in tools
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
        ]
        system = _message_text(messages[0].get("content")) if messages[0].get("role") == "system" else ""
        called_back = messages[-1].get("role") == "tool" or user_text.startswith("<operation_finished ")
        if not offered and re.search(r"\btitle\b", system, re.I):
            plan.content = encode_text(_mock_demo.title_for(user_text))
        elif called_back:
            plan.content = encode_text(_mock_demo.answer_from_results(messages, _message_text))
        else:
            reply = _mock_demo.reply_to(user_text, (name for name in offered if isinstance(name, str)))
            if reply.tool_name is not None:
                arguments = orjson.dumps(reply.tool_args).decode()
                # Random: the counter behind `call_mock_<seq>` starts again with the process; a session outlives it.
                plan.tool_calls.append(ToolCall(f"call_demo_{uuid.uuid4().hex[:20]}", reply.tool_name, arguments))
            else:
                plan.content = encode_text(reply.text)

    def _run_scenarios(self, turn: Turn, markers: list[Marker], *, called_back: bool) -> Response | None:
        """Apply each marker in order; the first error response wins. A `tool` marker calls its tool when the
        model is asked the user's message; with `when=results`, when it is called back with tool results instead."""
        for marker in markers:
            calls_tool = marker.name in ("tool", "bad_tool_args")
            on_results = calls_tool and marker.params.get("when") == "results"
            if on_results and not called_back:
                continue
            scenario = SCENARIOS.get(marker.name)
            if scenario is None:
                raise MarkerError(f"unknown mock scenario {marker.name!r}; known: {', '.join(SCENARIOS)}")
            if not self._active(marker):
                if marker.name != "bad_tool_args":
                    continue
                scenario = SCENARIOS["tool"]  # a malformed call that has used up its `times` comes back well-formed
            if "delay_ms" in marker.params:
                turn.plan.delay = marker.number("delay_ms", 0) / 1000
                turn.plan.paced = True
            calls_before = len(turn.plan.tool_calls)
            if (failure := scenario(turn, marker)) is not None:
                return failure
            if calls_tool and called_back and not on_results:
                del turn.plan.tool_calls[calls_before:]  # its pace and counts hold; the results are quoted instead
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
