"""Every resume path honours the client's cursor (`Last-Event-ID`, `?after=`, WebSocket `resume {after}`); only a
missing cursor, or one of another turn, replays from the turn's `start`."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_ws import recv, send, socket, until_done
from tests.conftest import LiveServer
from tests.sse import Frame
from tests.streams.test_durable_turns import (
    ALICE,
    SLOW,
    assert_well_formed,
    frames_of,
    kinds,
    new_session,
    read,
    replay_from,
    send_to,
)

Chat = tuple[httpx.AsyncClient, LiveServer]


async def read_part_of_a_reply(client: httpx.AsyncClient, sid: str, deltas: int = 10) -> tuple[str, list[Frame]]:
    """Start a slow reply and read its first frames, as a browser whose connection then drops."""
    first: list[Frame] = []
    async with client.stream("POST", f"/api/chat/sessions/{sid}/stream", json={"message": SLOW}, headers=ALICE) as r:
        task_id = r.headers["x-copilot-task-id"]
        async for frame in frames_of(r):
            first.append(frame)
            if kinds(first).count("text-delta") >= deltas:
                break
    return task_id, first


@pytest.mark.parametrize("cursor", ["last-event-id", "after"])
async def test_session_resume_sends_exactly_the_frames_after_the_cursor(chat: Chat, cursor: str) -> None:
    """Regression: `GET /api/chat/sessions/{id}/stream` ignored `Last-Event-ID`, so a client reconnecting there
    the way EventSource does got the reply again from its start and showed every frame twice."""
    client, _ = chat
    sid = await new_session(client)
    task_id, first = await read_part_of_a_reply(client, sid)
    last_id = first[-1].id
    assert last_id is not None

    url = f"/api/chat/sessions/{sid}/stream"
    if cursor == "last-event-id":
        rest = read(client, "GET", url, headers={**ALICE, "Last-Event-ID": last_id})
    else:
        rest = read(client, "GET", url, params={"after": last_id}, headers=ALICE)
    await rest.done()
    assert rest.status == 200 and rest.task_id == task_id

    full = await replay_from(client, task_id)
    assert kinds(rest.frames)[0] != "start"
    assert first + rest.frames == full  # no gap, no duplicate
    assert_well_formed(full)


async def test_a_cursor_of_the_sessions_previous_reply_replays_the_running_one_from_its_start(chat: Chat) -> None:
    """An EventSource on the resume URL reconnects after a reply ended, with that reply's last id; if the next
    reply runs by then, the old cursor must not skip the new reply's first frames."""
    client, _ = chat
    sid = await new_session(client)
    earlier = send_to(client, sid, "[[mock:text tokens=40]]")
    await earlier.done()
    stale = earlier.frames[-2].id  # the `finish` of the earlier reply
    assert stale is not None

    running = send_to(client, sid, SLOW)
    await running.wait_for_text(2)
    resumed = read(client, "GET", f"/api/chat/sessions/{sid}/stream", headers={**ALICE, "Last-Event-ID": stale})
    await resumed.done()
    await running.done()
    assert resumed.task_id == running.task_id
    assert resumed.frames == running.frames  # the whole reply, from its `start`


async def test_websocket_resume_with_a_cursor_of_the_previous_reply_starts_the_running_one_at_its_start(
    chat: Chat,
) -> None:
    """Regression: cursors were `0-1`, `0-2`, … in every turn, so `resume {after}` with a cursor kept from the
    session's previous reply skipped as many chunks of the running reply."""
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=40]]"})
        earlier, _ = await until_done(ws)
    stale = earlier[-1]["id"]
    async with socket(live, sid) as writer, socket(live, sid) as reader:
        await send(writer, {"type": "message", "message": "[[mock:text tokens=30 delay_ms=20]]"})
        first = await recv(writer)
        await send(reader, {"type": "resume", "after": stale})
        replayed, _ = await until_done(reader)
        rest, _ = await until_done(writer)
    assert replayed[0]["chunk"]["type"] == "start"
    assert replayed == [first, *rest]
