"""uvicorn's httptools HTTP protocol with a bound on the request head, for `copilot serve`.

The request line and headers are parsed by the server before the ASGI app sees anything, and httptools has no
size limit: it concatenates a header's pieces until the header ends, so a 64 MB `Authorization` header was read
whole (seconds of CPU, hundreds of MB) before any middleware could look at it. This protocol counts the bytes of
each request head as they arrive, before handing them to the parser, and answers 431 and closes the connection
as soon as a head passes `max_head_bytes`: at most one read of the socket (up to 256 KB) is held beyond it.

Bodies are not counted (`BodyLimit` bounds those); after a head ends, counting resumes with the next request
on the connection. A pipelined request that starts inside the same read as the previous one's end is counted
from the next read on.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from backend.errors import HeadersTooLarge

log = logging.getLogger("copilot.http")

_HEAD_END = b"\r\n\r\n"


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """Refuses a request head above `max_head_bytes` with 431 before reading more of it."""

    max_head_bytes: ClassVar[int] = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn makes one protocol per connection: these count the head of the connection's current request.
        self._head_bytes = 0
        self._head_tail = b""
        self._reading_head = True

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            # The head ends at the first blank line; its CRLFCRLF may straddle two reads.
            window = self._head_tail + data
            end = window.find(_HEAD_END)
            seen = self._head_bytes + (len(data) if end < 0 else end + len(_HEAD_END) - len(self._head_tail))
            if seen > self.max_head_bytes:
                self._refuse()
                return
            self._head_bytes, self._head_tail = seen, window[-(len(_HEAD_END) - 1) :]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes, self._head_tail = True, 0, b""

    def _refuse(self) -> None:
        self._reading_head = False
        log.warning("refused a request head above %d bytes from %s", self.max_head_bytes, self.client)
        # Only between responses: a 431 in the middle of another response would corrupt it.
        if self.cycle is None or self.cycle.response_complete:
            error = HeadersTooLarge(f"request line and headers exceed {self.max_head_bytes} bytes")
            body = orjson.dumps(error.to_dict())
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
        self.transport.close()


def head_limited(max_head_bytes: int) -> type[HeadLimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`), refusing heads above `max_head_bytes`."""
    return type("HeadLimitedHttpToolsProtocol", (HeadLimitedHttpToolsProtocol,), {"max_head_bytes": max_head_bytes})
