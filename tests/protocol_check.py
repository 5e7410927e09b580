"""Ordering rules of the UI message stream, checked the way the `ai` client (v6) applies them, and stricter.

`check_sequence` reports what makes `useChat` fail (a `text-delta` without its `text-start`, a tool output
for an unknown call, a text or reasoning part left open across `finish-step`) and what the client silently tolerates
but our service must never send (no `start`, two `finish`es, chunks after `finish`, unbalanced steps, a tool
call left running: still streaming its input, or with its input and no output, when the message ends, unless the
message ends with `finishReason: tool-calls`, the calls waiting for the client: a frontend tool, a question, an
approval). `check_body` also checks the SSE framing of a whole response body. Tests run both on every stream. A
continuation of a message (after answers) may give outputs to the calls of the message's earlier stream
(`earlier_calls`).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from backend.chat.protocol import (
    DONE,
    Chunk,
    Finish,
    FinishStep,
    ReasoningDelta,
    ReasoningEnd,
    ReasoningStart,
    Start,
    StartStep,
    TextDelta,
    TextEnd,
    TextStart,
    ToolApprovalRequest,
    ToolInputAvailable,
    ToolInputDelta,
    ToolInputError,
    ToolInputStart,
    ToolOutputAvailable,
    ToolOutputDenied,
    ToolOutputError,
    decode,
)


def check_sequence(chunks: Iterable[Chunk], earlier_calls: Iterable[str] = ()) -> list[str]:
    """Violations in a complete message's chunks, in order of appearance; empty when the stream is valid.
    `earlier_calls`: ids of the calls an earlier stream of the same message showed (this one continues it)."""
    problems: list[str] = []
    open_texts: set[str] = set()
    open_reasoning: set[str] = set()
    streaming_tools: set[str] = set()  # after tool-input-start, before tool-input-available
    known_tools: set[str] = set(earlier_calls)
    finished_tools: set[str] = set()
    finish_reason: str | None = None
    in_step = False
    starts = finishes = 0

    for index, chunk in enumerate(chunks):
        at = f"#{index} {chunk.type}"
        if finishes:
            problems.append(f"{at}: chunk after 'finish'")

        match chunk:
            case Start():
                starts += 1
                if starts > 1:
                    problems.append(f"{at}: more than one 'start'")
                elif index > 0:
                    problems.append(f"{at}: 'start' is not the first chunk")
            case StartStep():
                if in_step:
                    problems.append(f"{at}: 'start-step' while a step is open")
                in_step = True
            case FinishStep():
                if not in_step:
                    problems.append(f"{at}: 'finish-step' without 'start-step'")
                if open_texts:
                    problems.append(f"{at}: text part(s) {sorted(open_texts)} still open (the client drops them)")
                    open_texts.clear()
                if open_reasoning:
                    problems.append(f"{at}: reasoning part(s) {sorted(open_reasoning)} still open")
                    open_reasoning.clear()
                in_step = False
            case TextStart(id=text_id):
                if text_id in open_texts:
                    problems.append(f"{at}: text part {text_id!r} started twice")
                open_texts.add(text_id)
            case TextDelta(id=text_id) | TextEnd(id=text_id):
                if text_id not in open_texts:
                    problems.append(f"{at}: text part {text_id!r} is not open (no active 'text-start')")
                if isinstance(chunk, TextEnd):
                    open_texts.discard(text_id)
            case ReasoningStart(id=part_id):
                if part_id in open_reasoning:
                    problems.append(f"{at}: reasoning part {part_id!r} started twice")
                open_reasoning.add(part_id)
            case ReasoningDelta(id=part_id) | ReasoningEnd(id=part_id):
                if part_id not in open_reasoning:
                    problems.append(f"{at}: reasoning part {part_id!r} is not open (no active 'reasoning-start')")
                if isinstance(chunk, ReasoningEnd):
                    open_reasoning.discard(part_id)
            case ToolInputStart(tool_call_id=call_id):
                if call_id in known_tools:
                    problems.append(f"{at}: tool call {call_id!r} started twice")
                streaming_tools.add(call_id)
                known_tools.add(call_id)
            case ToolInputDelta(tool_call_id=call_id):
                if call_id not in streaming_tools:
                    problems.append(f"{at}: tool call {call_id!r} has no open 'tool-input-start'")
            case ToolInputAvailable(tool_call_id=call_id):
                streaming_tools.discard(call_id)
                known_tools.add(call_id)
            case ToolInputError(tool_call_id=call_id):
                if call_id in finished_tools:
                    problems.append(f"{at}: tool call {call_id!r} already has an output")
                streaming_tools.discard(call_id)
                known_tools.add(call_id)
                finished_tools.add(call_id)
            case ToolApprovalRequest(tool_call_id=call_id):
                if call_id not in known_tools or call_id in streaming_tools:
                    problems.append(f"{at}: approval asked for {call_id!r} before its input is available")
                elif call_id in finished_tools:
                    problems.append(f"{at}: approval asked for {call_id!r}, which has an output")
            case (
                ToolOutputAvailable(tool_call_id=call_id)
                | ToolOutputError(tool_call_id=call_id)
                | ToolOutputDenied(tool_call_id=call_id)
            ):
                if call_id not in known_tools:
                    problems.append(f"{at}: unknown tool call {call_id!r} (no 'tool-input-*' before it)")
                elif call_id in finished_tools:
                    problems.append(f"{at}: tool call {call_id!r} already has an output")
                streaming_tools.discard(call_id)
                finished_tools.add(call_id)
            case Finish(finish_reason=reason):
                finish_reason = reason
                finishes += 1
                if finishes == 2:
                    problems.append(f"{at}: more than one 'finish'")
                if in_step:
                    problems.append(f"{at}: step still open (no 'finish-step')")
                    in_step = False
                if open_texts:
                    problems.append(f"{at}: text part(s) {sorted(open_texts)} never ended")
                    open_texts.clear()
                if open_reasoning:
                    problems.append(f"{at}: reasoning part(s) {sorted(open_reasoning)} never ended")
                    open_reasoning.clear()

    if starts == 0:
        problems.append("no 'start' chunk")
    if finishes == 0:
        problems.append("no 'finish' chunk")
    if in_step:
        problems.append("step still open at the end")
    if open_texts:
        problems.append(f"text part(s) {sorted(open_texts)} never ended")
    if open_reasoning:
        problems.append(f"reasoning part(s) {sorted(open_reasoning)} never ended")
    if streaming_tools:
        problems.append(f"tool call(s) {sorted(streaming_tools)} stuck in input-streaming")
    running = known_tools - streaming_tools - finished_tools - set(earlier_calls)
    if running and finish_reason != "tool-calls":
        problems.append(f"tool call(s) {sorted(running)} left running (input-available, no output)")
    return problems


def parse_body(body: bytes) -> tuple[list[Chunk], list[str]]:
    """Split an SSE body into chunks; also returns framing problems (undecodable data, missing `[DONE]`).

    Comment lines (heartbeats) and `id:` lines are skipped, as the client skips them.
    """
    chunks: list[Chunk] = []
    problems: list[str] = []
    if not body.endswith(b"\n\n"):
        problems.append("body does not end with a blank line (the client drops the last event)")
    if not body.endswith(DONE):
        problems.append("body does not end with 'data: [DONE]'")
    events = [event for event in body.split(b"\n\n") if event]
    done_seen = False
    for number, event in enumerate(events):
        data_lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if not data_lines:
            continue
        if len(data_lines) > 1:
            problems.append(f"event {number}: {len(data_lines)} data lines (the client joins them)")
        data = b"\n".join(data_lines)
        if done_seen:
            problems.append(f"event {number}: data after [DONE]")
        if data == b"[DONE]":
            done_seen = True
            continue
        try:
            chunks.append(decode(data))
        except ValidationError as exc:
            problems.append(f"event {number}: not a chunk we emit: {data[:200]!r} ({exc.error_count()} errors)")
    return chunks, problems


def check_body(body: bytes, earlier_calls: Iterable[str] = ()) -> list[str]:
    """Framing and ordering violations of a complete SSE response body; empty when it is valid."""
    chunks, problems = parse_body(body)
    return problems + check_sequence(chunks, earlier_calls)
