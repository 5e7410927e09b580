"""`backend/chat/protocol.py` (chunk models, SSE encoding) and the tests' ordering oracle, `tests/protocol_check.py`."""

from __future__ import annotations

import json
import tracemalloc
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue, ValidationError

from backend.chat import protocol as p
from backend.chat.protocol import (
    DONE,
    UI_MESSAGE_STREAM_HEADERS,
    Abort,
    Chunk,
    DataPart,
    Error,
    Finish,
    FinishStep,
    MessageMetadata,
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
    encode,
    heartbeat,
    to_json,
)
from tests.protocol_check import check_body, check_sequence, parse_body

EVERY_CHUNK: list[Chunk] = [
    Start(message_id="msg-1", message_metadata={"model": "gpt", "cost": None}),
    StartStep(),
    TextStart(id="t1"),
    TextDelta(id="t1", delta='Hé\n"quoted" </script> \u2028 \x00'),
    TextEnd(id="t1"),
    ReasoningStart(id="r1"),
    ReasoningDelta(id="r1", delta="thinking"),
    ReasoningEnd(id="r1"),
    ToolInputStart(tool_call_id="c1", tool_name="search"),
    ToolInputDelta(tool_call_id="c1", input_text_delta='{"q": "x"}'),
    ToolInputAvailable(tool_call_id="c1", tool_name="search", input={"q": "x"}),
    ToolInputError(tool_call_id="c2", tool_name="search", input='{"q": ', error_text="arguments cut off"),
    ToolOutputAvailable(tool_call_id="c1", output=None),
    ToolOutputError(tool_call_id="c1", error_text="timeout"),
    ToolApprovalRequest(approval_id="approval-c1", tool_call_id="c1"),
    ToolOutputDenied(tool_call_id="c1"),
    Error(error_text="model failed"),
    FinishStep(),
    Finish(finish_reason="error", message_metadata={"tokens": 3}),
    MessageMetadata(message_metadata=None),
    Abort(reason="user"),
    DataPart(type="data-usage", data={"tokens": 3}, id="u1", transient=True),
]


def _union_members() -> set[type]:
    members = typing.get_args(typing.get_args(Chunk)[0])
    return {typing.get_args(member)[0] for member in members}


def test_every_chunk_class_is_in_the_union_and_covered_here() -> None:
    assert {type(chunk) for chunk in EVERY_CHUNK} == _union_members()


@pytest.mark.parametrize("chunk", EVERY_CHUNK, ids=lambda c: c.type)
def test_decode_round_trips(chunk: Chunk) -> None:
    assert decode(to_json(chunk)) == chunk
    assert decode(to_json(chunk).decode()) == chunk


def test_encode_frames_one_sse_event() -> None:
    chunk = TextStart(id="t1")
    assert encode(chunk, "1712-0") == b'id: 1712-0\ndata: {"type":"text-start","id":"t1"}\n\n'
    assert encode(chunk, None) == b'data: {"type":"text-start","id":"t1"}\n\n'
    assert encode(chunk) == encode(chunk, None)


def test_wire_names_are_camel_case() -> None:
    wire = json.loads(to_json(ToolOutputError(tool_call_id="c1", error_text="boom")))
    assert wire == {"type": "tool-output-error", "toolCallId": "c1", "errorText": "boom"}
    assert ToolOutputError.model_validate({"toolCallId": "c1", "errorText": "e"}).tool_call_id == "c1"


def test_required_nullable_fields_are_written_as_null() -> None:
    assert json.loads(to_json(ToolOutputAvailable(tool_call_id="c", output=None))) == {
        "type": "tool-output-available",
        "toolCallId": "c",
        "output": None,
    }
    assert json.loads(to_json(ToolInputAvailable(tool_call_id="c", tool_name="t", input=None)))["input"] is None
    assert json.loads(to_json(DataPart(type="data-x", data=None))) == {"type": "data-x", "data": None}
    assert json.loads(to_json(MessageMetadata(message_metadata=None))) == {
        "type": "message-metadata",
        "messageMetadata": None,
    }


def test_optional_none_fields_are_left_out_but_nested_nulls_kept() -> None:
    assert to_json(Finish()) == b'{"type":"finish"}'
    assert to_json(Abort()) == b'{"type":"abort"}'
    assert to_json(Start(message_id="m")) == b'{"type":"start","messageId":"m"}'
    output: JsonValue = {"rows": [None, 1], "error": None}
    assert json.loads(to_json(ToolOutputAvailable(tool_call_id="c", output=output)))["output"] == output


@given(chunk_id=st.text(), delta=st.text())
def test_text_delta_fast_path_matches_pydantic_byte_for_byte(chunk_id: str, delta: str) -> None:
    chunk = TextDelta(id=chunk_id, delta=delta)
    assert to_json(chunk) == TextDelta.__pydantic_serializer__.to_json(chunk, by_alias=True)
    assert b"\n" not in to_json(chunk)  # one `data:` line per event, whatever the text holds


def test_finish_reason_unknown_is_refused() -> None:
    with pytest.raises(ValidationError):
        Finish(finish_reason="unknown")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        decode('{"type":"finish","finishReason":"unknown"}')


@pytest.mark.parametrize(
    "data",
    [
        '{"type":"text-delta","id":"t"}',  # missing field
        '{"type":"text-start","id":"t","extra":1}',  # unknown field
        '{"type":"source-url","sourceId":"s","url":"u"}',  # a type we do not emit
        '{"type":"data-","data":1}',  # data part without a name
        '{"id":"t"}',  # no type
        "[1]",
    ],
)
def test_decode_rejects_what_we_never_emit(data: str) -> None:
    with pytest.raises(ValidationError):
        decode(data)


def test_decode_maps_data_types_to_data_part() -> None:
    chunk = decode('{"type":"data-weather","data":{"temp":3},"id":"w"}')
    assert chunk == DataPart(type="data-weather", data={"temp": 3}, id="w")


def test_done_heartbeat_and_headers() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert heartbeat().startswith(b":") and heartbeat().endswith(b"\n\n")
    assert dict(UI_MESSAGE_STREAM_HEADERS) == {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "connection": "keep-alive",
        "x-vercel-ai-ui-message-stream": "v1",
        "x-accel-buffering": "no",
    }
    with pytest.raises(TypeError):
        UI_MESSAGE_STREAM_HEADERS["x"] = "y"  # type: ignore[index]


# --- protocol_check ---------------------------------------------------------------------------------

VALID: list[Chunk] = [
    Start(message_id="m"),
    StartStep(),
    TextStart(id="t1"),
    TextDelta(id="t1", delta="Looking"),
    TextEnd(id="t1"),
    ToolInputStart(tool_call_id="c1", tool_name="search"),
    ToolInputDelta(tool_call_id="c1", input_text_delta="{}"),
    ToolInputAvailable(tool_call_id="c1", tool_name="search", input={}),
    ToolOutputAvailable(tool_call_id="c1", output=None),
    FinishStep(),
    StartStep(),
    TextStart(id="t2"),
    TextDelta(id="t2", delta="Done"),
    TextEnd(id="t2"),
    DataPart(type="data-usage", data=1),
    FinishStep(),
    Finish(finish_reason="stop"),
]


def test_valid_sequence_has_no_violations() -> None:
    assert check_sequence(VALID) == []


def test_tool_output_may_come_in_a_later_step() -> None:
    chunks: list[Chunk] = [
        Start(message_id="m"),
        StartStep(),
        ToolInputAvailable(tool_call_id="c1", tool_name="t", input={}),
        FinishStep(),
        StartStep(),
        ToolOutputError(tool_call_id="c1", error_text="no"),
        FinishStep(),
        Finish(),
    ]
    assert check_sequence(chunks) == []


S, SS, FS, F = Start(message_id="m"), StartStep(), FinishStep(), Finish(finish_reason="stop")


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([S, SS, TextDelta(id="t", delta="x"), FS, F], "#2 text-delta: text part 't' is not open"),
        ([S, SS, TextEnd(id="t"), FS, F], "#2 text-end: text part 't' is not open"),
        ([S, SS, TextStart(id="t"), FS, F], "#3 finish-step: text part(s) ['t'] still open"),
        (
            [S, SS, TextStart(id="t"), FS, SS, TextDelta(id="t", delta="x"), TextEnd(id="t"), FS, F],
            "#5 text-delta: text part 't' is not open",
        ),
        ([S, SS, TextStart(id="t"), TextStart(id="t"), TextEnd(id="t"), FS, F], "started twice"),
        ([S, SS, ToolOutputAvailable(tool_call_id="c", output=1), FS, F], "unknown tool call 'c'"),
        ([S, SS, ToolOutputError(tool_call_id="c", error_text="e"), FS, F], "unknown tool call 'c'"),
        ([S, SS, ToolInputDelta(tool_call_id="c", input_text_delta="{"), FS, F], "no open 'tool-input-start'"),
        ([S, SS, ToolInputStart(tool_call_id="c", tool_name="t"), FS, F], "stuck in input-streaming"),
        ([S, SS, FS, F, F], "#4 finish: more than one 'finish'"),
        ([S, SS, FS, F, TextStart(id="t")], "#4 text-start: chunk after 'finish'"),
        ([S, SS, SS, FS, F], "#2 start-step: 'start-step' while a step is open"),
        ([S, FS, F], "#1 finish-step: 'finish-step' without 'start-step'"),
        ([S, SS, F], "#2 finish: step still open"),
        ([S, SS, FS], "no 'finish' chunk"),
        ([SS, FS, F], "no 'start' chunk"),
        ([SS, S, FS, F], "#1 start: 'start' is not the first chunk"),
        ([S, S, SS, FS, F], "#1 start: more than one 'start'"),
    ],
)
def test_each_rule_is_reported(chunks: list[Chunk], expected: str) -> None:
    problems = check_sequence(chunks)
    assert any(expected in problem for problem in problems), problems


def _body(chunks: list[Chunk], end: bytes = DONE) -> bytes:
    return b"".join(encode(chunk, f"{n}-0") for n, chunk in enumerate(chunks)) + end


def test_check_body_accepts_a_valid_body_with_heartbeats() -> None:
    body = heartbeat() + _body(VALID[:5], end=b"") + heartbeat() + _body(VALID[5:])
    chunks, problems = parse_body(body)
    assert problems == []
    assert chunks == VALID
    assert check_body(body) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_body(VALID, end=b""), "does not end with 'data: [DONE]'"),
        (_body(VALID)[:-1], "does not end with a blank line"),
        (_body(VALID) + encode(TextStart(id="x")), "data after [DONE]"),
        (b'data: {"type":"finish","finishReason":"unknown"}\n\n' + DONE, "not a chunk we emit"),
        (b'data: {"type":"start",\ndata: "messageId":"m"}\n\n' + DONE, "2 data lines"),
    ],
)
def test_check_body_reports_framing_problems(body: bytes, expected: str) -> None:
    problems = check_body(body)
    assert any(expected in problem for problem in problems), problems


def test_a_text_delta_payload_holds_its_own_size_not_a_write_buffer() -> None:
    """A turn keeps every payload in its log: orjson's 4 KB write buffer per token was most of a stream's memory."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        payloads = [p.to_json(p.TextDelta(id="text-0", delta=f" w{i}")) for i in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "lineno"))
    assert len(payloads) == 200
    assert held / 200 < 256, f"{held / 200:.0f} bytes per payload"
