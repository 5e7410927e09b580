"""The least any Python service that relays a model's stream must spend: a bare relay on asyncio streams (uvloop).

It reads a request, opens a connection to the model, sends the body on, and copies the model's response bytes to
the client as they arrive: no parsing, no storage, no framework. Its CPU per 1,000 tokens (`relay` in the tables)
is what one read and one write per token cost on this machine through Python's event loop and the kernel, a floor
under the service's figure that no code of the service can go below while it sends each token as it comes.

`python -m bench.relay --port P --upstream-port M` (the benchmark starts it); `GET /ready` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import uvloop

_READY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: tuple[str, int]) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /ready"):
            writer.write(_READY)
            return
        body = await reader.readexactly(_content_length(head))
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        try:
            path = head.split(b" ", 2)[1]
            up_writer.write(
                b"POST %b HTTP/1.1\r\nhost: model\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer relay\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b"
                % (path, len(body), body)
            )
            await up_reader.readuntil(b"\r\n\r\n")  # the model answers chunked: its body is passed on as it is
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                b"connection: close\r\n\r\n"
            )
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def serve(port: int, upstream_port: int) -> None:
    upstream = ("127.0.0.1", upstream_port)
    server = await asyncio.start_server(lambda r, w: _relay(r, w, upstream), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
