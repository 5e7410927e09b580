"""Reading SSE bodies in tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class Frame:
    id: str | None
    data: str


def parse(body: bytes) -> list[Frame]:
    frames = []
    for block in body.decode().split("\n\n"):
        event_id, data = None, []
        for line in block.split("\n"):
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            frames.append(Frame(event_id, "\n".join(data)))
    return frames


def chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a stream (without `[DONE]`)."""
    return [orjson.loads(f.data) for f in parse(body) if f.data != "[DONE]"]


def types(body: bytes) -> list[str]:
    return [c["type"] for c in chunks(body)]


def text_of(body: bytes) -> str:
    return "".join(c["delta"] for c in chunks(body) if c["type"] == "text-delta")


async def read_stream(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
    async with client.stream(method, url, **kwargs) as response:
        body = await response.aread()
    return response, body
