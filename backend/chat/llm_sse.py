"""The `data` of a model's server-sent events, read as bytes: the SDK's rules for them without its per-event
objects (`[DONE]` ends the stream), for chat completion chunks and Responses events alike."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from backend.chat.llm_streams import StreamedReply


async def sse_data(reply: StreamedReply) -> AsyncGenerator[bytes, None]:
    """The `data` of each server-sent event of `reply`, up to `[DONE]` (after which the rest of the body is
    drained, so that the connection can be reused).

    Lines end in LF, CRLF or CR; an event ends at a blank line; its `data:` lines are joined with LF. Other fields
    (`event`, `id`, `retry`) and comments are ignored: a chat completion chunk and a Responses event both say in
    their `data` what they are.
    """
    chunks = reply.chunks()
    data: list[bytes] = []
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).splitlines(keepends=True) if pending else chunk.splitlines(keepends=True)
        # An unterminated last line, or one ending in CR (maybe the first half of a CRLF), waits for more bytes.
        pending = lines.pop() if lines and lines[-1][-1:] != b"\n" else b""
        for line in lines:
            if line in (b"\n", b"\r\n", b"\r"):
                if data:
                    event = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    if event.startswith(b"[DONE]"):
                        await reply.drain()
                        return
                    yield event
            elif line.startswith(b"data:"):
                value = line[5:].rstrip(b"\r\n")
                data.append(value[1:] if value.startswith(b" ") else value)
    # An event not ended by a blank line when the body ends is incomplete: dropped, as the SSE spec says.
