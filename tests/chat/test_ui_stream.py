"""`backend/chat/ui_stream.py`: turn events → AI SDK chunks, and no tool call left open however the turn ends."""

from __future__ import annotations

from backend.chat import events as ev
from backend.chat import protocol as p
from backend.chat.open_parts import CUT_INPUT_TEXT, NO_OUTPUT_TEXT
from backend.chat.ui_stream import UIStreamTranslator
from tests.protocol_check import check_sequence


def translate(*events: ev.TurnEvent, finish_reason: str = "error") -> list[p.Chunk]:
    translator = UIStreamTranslator()
    out = [chunk for event in events for chunk in translator.translate(event)]
    return out + translator.close(finish_reason)


def test_argument_fragments_stream_as_tool_input_deltas() -> None:
    chunks = translate(
        ev.TurnStarted("m"),
        ev.StepStarted(),
        ev.ToolCallStarted("c1", "calculate"),
        ev.ToolInputDelta("c1", '{"expression": '),
        ev.ToolInputDelta("c1", '"6*7"}'),
        ev.ToolCallReady("c1", "calculate", {"expression": "6*7"}),
        ev.ToolFinished("c1", True, 42),
        ev.StepFinished(),
        finish_reason="stop",
    )
    assert chunks[2:6] == [
        p.ToolInputStart(tool_call_id="c1", tool_name="calculate"),
        p.ToolInputDelta(tool_call_id="c1", input_text_delta='{"expression": '),
        p.ToolInputDelta(tool_call_id="c1", input_text_delta='"6*7"}'),
        p.ToolInputAvailable(tool_call_id="c1", tool_name="calculate", input={"expression": "6*7"}),
    ]
    assert check_sequence(chunks) == []


def test_a_call_cut_off_by_a_failure_is_closed_with_the_raw_input_it_had() -> None:
    """The model's stream dropped mid-arguments: the turn fails, and the call is closed rather than left running."""
    chunks = translate(
        ev.TurnStarted("m"),
        ev.StepStarted(),
        ev.TextDelta("Let me compute. "),
        ev.ToolCallStarted("c1", "calculate"),
        ev.ToolInputDelta("c1", '{"expre'),
        ev.TurnFailed("could not reach the model provider", "connection_error"),
    )
    assert chunks[-5:] == [
        p.ToolInputError(tool_call_id="c1", tool_name="calculate", input='{"expre', error_text=CUT_INPUT_TEXT),
        p.FinishStep(),
        p.DataPart(type="data-error", data={"code": "provider_error", "retryable": True}, transient=True),
        p.Error(error_text="could not reach the model provider"),
        p.Finish(finish_reason="error"),
    ]
    assert check_sequence(chunks) == []


def test_a_call_stopped_while_its_tool_runs_gets_an_output_error() -> None:
    chunks = translate(
        ev.TurnStarted("m"),
        ev.StepStarted(),
        ev.ToolCallStarted("c1", "slow"),
        ev.ToolCallReady("c1", "slow", {}),
        ev.ToolCallStarted("c2", "slow"),
        ev.ToolCallReady("c2", "slow", {}),
        ev.ToolFinished("c2", True, "done"),
        ev.TurnAborted("stopped by the user"),
        finish_reason="other",
    )
    assert [c for c in chunks if isinstance(c, p.ToolOutputError)] == [
        p.ToolOutputError(tool_call_id="c1", error_text=NO_OUTPUT_TEXT)
    ]
    assert [c.type for c in chunks[-4:]] == ["tool-output-error", "finish-step", "abort", "finish"]
    assert check_sequence(chunks) == []


def test_invalid_arguments_become_an_input_error_with_the_raw_text() -> None:
    chunks = translate(
        ev.TurnStarted("m"),
        ev.StepStarted(),
        ev.ToolCallStarted("c1", "calculate"),
        ev.ToolInputDelta("c1", '{"expression": "6*7"'),
        ev.ToolInputFailed("c1", "calculate", '{"expression": "6*7"', "arguments are not valid JSON: ..."),
        ev.ToolFinished("c1", False, None, "not run"),  # a late outcome for a closed call sends nothing
        ev.StepFinished(),
    )
    errors = [c for c in chunks if c.type in ("tool-input-error", "tool-output-error")]
    assert errors == [
        p.ToolInputError(
            tool_call_id="c1",
            tool_name="calculate",
            input='{"expression": "6*7"',
            error_text="arguments are not valid JSON: ...",
        )
    ]
    assert check_sequence(chunks) == []


def test_reasoning_is_one_part_ended_before_text_and_tool_calls() -> None:
    chunks = translate(
        ev.TurnStarted("m"),
        ev.StepStarted(),
        ev.ReasoningDelta("Let me "),
        ev.ReasoningDelta("think."),
        ev.TextDelta("Calling."),
        ev.ReasoningDelta("More."),
        ev.ToolCallStarted("c1", "calculate"),
        ev.ToolCallReady("c1", "calculate", {}),
        ev.ToolFinished("c1", True, 1),
        ev.StepFinished(),
        finish_reason="stop",
    )
    assert chunks[2:12] == [
        p.ReasoningStart(id="reasoning-0"),
        p.ReasoningDelta(id="reasoning-0", delta="Let me "),
        p.ReasoningDelta(id="reasoning-0", delta="think."),
        p.ReasoningEnd(id="reasoning-0"),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="Calling."),
        p.TextEnd(id="text-0"),
        p.ReasoningStart(id="reasoning-1"),
        p.ReasoningDelta(id="reasoning-1", delta="More."),
        p.ReasoningEnd(id="reasoning-1"),
    ]
    assert check_sequence(chunks) == []


def test_open_reasoning_ends_before_finish_step() -> None:
    chunks = translate(ev.TurnStarted("m"), ev.StepStarted(), ev.ReasoningDelta("hm"), ev.StepFinished())
    assert [c.type for c in chunks] == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "finish-step",
        "finish",
    ]


def test_the_end_of_a_turn_carries_its_metadata_on_finish() -> None:
    translator = UIStreamTranslator()
    metadata = {"model": "m", "usage": {"promptTokens": 3}}
    [finish] = translator.translate(ev.TurnEnded("stop", metadata))
    assert finish == p.Finish(finish_reason="stop", message_metadata=metadata)
    assert (
        p.to_json(finish)
        == b'{"type":"finish","finishReason":"stop","messageMetadata":{"model":"m","usage":{"promptTokens":3}}}'
    )


def test_a_denial_is_an_output_error_for_ai5_which_has_no_denied_chunk() -> None:
    """A continuation that starts with a denied call: ai 6 and 7 get `tool-output-denied`; ai 5, whose parser rejects
    that chunk, gets the denial the model reads as the call's error."""
    denied = ev.ToolDenied("c1", "The user denied this call; it did not run. Reason: not now")
    ai6 = UIStreamTranslator().translate(denied)
    assert ai6 == [p.ToolOutputDenied(tool_call_id="c1")]
    ai5 = UIStreamTranslator(approval_chunks=False).translate(denied)
    assert ai5 == [p.ToolOutputError(tool_call_id="c1", error_text=denied.text)]
