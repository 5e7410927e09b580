"""A streamed call sent ahead (`backend/chat/llm_ahead.py`), against a raw server that records every request and
when its client hung up: the same call is taken up (one request), any other is sent afresh and the one ahead is
cancelled, a discarded call's connection is closed, and a call ahead that failed fails the attempt that takes it."""

from __future__ import annotations

import asyncio

import pytest

from backend.chat.llm import LLMClient, RetryPolicy, TextChunk
from backend.chat.llm_ahead import CallAhead
from backend.errors import ModelError
from tests.helpers import until
from tests.raw_http import RecordingModel, raw_server, read_request, sse_reply

ASKED = [{"role": "user", "content": "hi"}]
OTHER = [{"role": "user", "content": "something else"}]
RETRY_ONCE = RetryPolicy(1, base_seconds=0.01, max_seconds=0.01)


async def texts(llm: LLMClient, messages: list[dict[str, str]], ahead: CallAhead | None = None) -> str:
    return "".join([e.text async for e in llm.stream(messages, ahead=ahead) if isinstance(e, TextChunk)])


def client(recording_model: RecordingModel) -> LLMClient:
    return LLMClient(base_url=recording_model.base_url, api_key="k", model="m", retry=RETRY_ONCE, idle_timeout=5)


async def test_the_same_call_is_taken_up_and_sent_once(recording_model: RecordingModel) -> None:
    llm = client(recording_model)
    try:
        recording_model.hold.clear()
        ahead = llm.send_ahead(ASKED)
        assert ahead is not None
        await until(lambda: recording_model.asked == ["hi"])  # out before anyone asked for it
        recording_model.hold.set()
        assert await texts(llm, ASKED, ahead=ahead) == "re: hi"
        ahead.discard()  # taken: nothing left to cancel
        assert await texts(llm, ASKED) == "re: hi"
    finally:
        await llm.close()
    assert recording_model.asked == ["hi", "hi"] and recording_model.hung_up == []


async def test_another_call_is_sent_afresh_and_the_one_ahead_is_cancelled(recording_model: RecordingModel) -> None:
    llm = client(recording_model)
    try:
        recording_model.hold.clear()
        ahead = llm.send_ahead(OTHER)
        assert ahead is not None
        await until(lambda: recording_model.asked == ["something else"])
        reply = asyncio.create_task(texts(llm, ASKED, ahead=ahead))
        await until(lambda: recording_model.hung_up == ["something else"])
        recording_model.hold.set()
        assert await reply == "re: hi"
    finally:
        await llm.close()
    assert recording_model.asked == ["something else", "hi"]


async def test_a_discarded_call_is_cancelled_whether_or_not_its_reply_had_begun(
    recording_model: RecordingModel,
) -> None:
    llm = client(recording_model)
    try:
        recording_model.hold.clear()
        waiting = llm.send_ahead([{"role": "user", "content": "waiting"}])
        assert waiting is not None
        await until(lambda: recording_model.asked == ["waiting"])
        waiting.discard()
        await until(lambda: recording_model.hung_up == ["waiting"])

        # A reply whose head is in (here: its whole body) is closed, not left to the pool half read.
        recording_model.hold.set()
        answered = llm.send_ahead(ASKED)
        assert answered is not None
        await until(lambda: answered._opening.done())
        answered.discard()
        await asyncio.sleep(0.05)
        assert await texts(llm, OTHER) == "re: something else"  # the pool still serves
    finally:
        await llm.close()
    assert recording_model.asked == ["waiting", "hi", "something else"]


async def test_a_call_ahead_that_failed_fails_the_attempt_that_takes_it_and_is_retried() -> None:
    bodies: list[bytes] = []

    async def unavailable_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, _, body = await read_request(reader)
        bodies.append(body)
        if len(bodies) == 1:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        else:
            writer.write(sse_reply("fine"))
        await writer.drain()

    async with raw_server(unavailable_once) as seen:
        llm = LLMClient(base_url=f"{seen[0]}/v1", api_key="k", model="m", retry=RETRY_ONCE, idle_timeout=5)
        try:
            ahead = llm.send_ahead(ASKED)
            assert ahead is not None
            await until(lambda: ahead._opening.done())
            assert await texts(llm, ASKED, ahead=ahead) == "fine"
        finally:
            await llm.close()
    assert bodies[0] == bodies[1]


async def test_a_failure_ahead_is_the_calls_own_when_no_retry_is_left() -> None:
    async def unavailable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        await writer.drain()

    async with raw_server(unavailable) as seen:
        llm = LLMClient(base_url=f"{seen[0]}/v1", api_key="k", model="m", retry=RetryPolicy(0), idle_timeout=5)
        try:
            ahead = llm.send_ahead(ASKED)
            assert ahead is not None
            with pytest.raises(ModelError) as caught:
                await texts(llm, ASKED, ahead=ahead)
        finally:
            await llm.close()
    assert caught.value.retryable and seen[1:] == ["connection"]


async def test_what_arrived_before_the_call_was_taken_up_survives_a_broken_connection(
    recording_model: RecordingModel,
) -> None:
    recording_model.cut_first = True
    llm = LLMClient(base_url=recording_model.base_url, api_key="k", model="m", retry=RetryPolicy(0), idle_timeout=5)
    received: list[str] = []
    try:
        ahead = llm.send_ahead(ASKED)
        assert ahead is not None
        await until(lambda: ahead._opening.done())
        await asyncio.sleep(0.1)  # the first event, then the break, arrive before anyone reads
        with pytest.raises(ModelError):
            async for event in llm.stream(ASKED, ahead=ahead):
                if isinstance(event, TextChunk):
                    received.append(event.text)
    finally:
        await llm.close()
    assert received == ["re: "]
