"""A terminal client for the chat API (`copilot chat`): a prompt loop that prints each reply as it streams.

`render` turns one UI message stream chunk into what the terminal shows and `iter_chunks` reads the chunks of an
SSE response; both are independent of the prompt loop. HTTP and connection failures become `ChatClientError`
where the client meets them, so the loop prints one line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

import httpx
import orjson

T = TypeVar("T")

TOOL_TEXT_LIMIT = 120
"""Tool inputs and outputs longer than this many characters are cut short on the tool's line."""

# The server sends a heartbeat every 15s (by default) while a reply is quiet, so a minute of silence means it is gone.
_TIMEOUT = httpx.Timeout(30.0, read=60.0)
_PROMPT = "> "
_QUIT_GRACE_SECONDS = 5.0
"""How long quitting waits for the cancel of the reply it interrupted to reach the server."""


class ChatClientError(Exception):
    """A failure to show as one line: an HTTP error answer, a lost connection or a malformed stream."""


class Interrupted(Exception):
    """Ctrl-C arrived while waiting in `interruptible`."""


def render(chunk: Mapping[str, Any], call: Mapping[str, Any] | None = None) -> str:
    """What the terminal shows for one chunk, or "" for the chunks that only structure the stream.

    A text delta is shown as it is; anything else is one line, given without its newline. A tool's line is shown
    once its result arrives: `call` is that call's `tool-input-available` chunk, which names the tool and its input.
    """
    match chunk.get("type"):
        case "text-delta":
            return str(chunk.get("delta", ""))
        case "tool-output-available":
            return f"⚙ {_call_text(call)} → {_clip(_compact(chunk.get('output')))}"
        case "tool-output-error":
            return f"✗ {_tool_name(call)}: {chunk.get('errorText', '')}"
        case "tool-input-error":
            return f"✗ {chunk.get('toolName', 'tool')}: {chunk.get('errorText', '')}"
        case "error":
            return f"! error: {chunk.get('errorText', '')}"
        case "abort":
            reason = chunk.get("reason")
            return f"! stopped: {reason}" if reason else "! stopped"
        case "finish" if chunk.get("finishReason") in ("length", "content-filter"):
            return f"! the reply was cut short ({chunk['finishReason']})"
        case _:
            return ""


def _tool_name(call: Mapping[str, Any] | None) -> str:
    return str(call.get("toolName", "tool")) if call is not None else "tool"


def _call_text(call: Mapping[str, Any] | None) -> str:
    if call is None:
        return "tool"
    return f"{_tool_name(call)}({_clip(_compact(call.get('input')))})"


def _compact(value: Any) -> str:
    """A JSON value on one line: strings as they are (whitespace collapsed), anything else as compact JSON."""
    if isinstance(value, str):
        return " ".join(value.split())
    return orjson.dumps(value).decode()


def _clip(text: str, limit: int = TOOL_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def iter_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of an SSE response, in order, leaving out SSE comments (heartbeats) and `[DONE]`.

    httpx joins lines across network reads and splits them on `\\n`, `\\r\\n` or `\\r`, as SSE allows. A frame's
    `data:` lines are joined with newlines; the other fields (`id:`, `event:`) are not needed here, and a frame the
    body ends in the middle of is dropped, as the SSE spec says. Raises `ChatClientError` for a chunk that is not a
    JSON object.
    """
    data: list[str] = []
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
            continue
        if not data:
            continue
        payload, data = "\n".join(data), []
        if payload == "[DONE]":
            continue
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise ChatClientError(f"the server sent a malformed chunk: {payload[:80]!r}") from e
        if not isinstance(chunk, dict):
            raise ChatClientError(f"the server sent a chunk that is not an object: {payload[:80]!r}")
        yield chunk


class _Screen:
    """Writes a reply as it arrives: text inline, every other rendering on a line of its own."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._mid_line = False

    def text(self, text: str) -> None:
        if text:
            self._write(text)

    def line(self, text: str) -> None:
        if text:
            self._write(("\n" if self._mid_line else "") + text + "\n")

    def end(self) -> None:
        if self._mid_line:
            self._write("\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
        self._mid_line = not text.endswith("\n")


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """Turns httpx's transport failures into `ChatClientError`."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise ChatClientError(f"the server did not answer in time ({type(e).__name__})") from e
    except httpx.TransportError as e:
        raise ChatClientError(f"connection problem: {e or type(e).__name__}") from e


async def _raise_for_error(response: httpx.Response) -> None:
    """Raises `ChatClientError` with the server's `error.message` for a 4xx/5xx answer, and the wait it asks for
    (`Retry-After`, e.g. over a per-user limit)."""
    if response.is_success:
        return
    await response.aread()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:200] or response.reason_phrase
    wait = _retry_after(response)
    status = f"HTTP {response.status_code}" + (f", retry in {wait}" if wait else "")
    raise ChatClientError(f"{message} ({status})")


def _retry_after(response: httpx.Response) -> str | None:
    """The `Retry-After` header (whole seconds) as a wait people read, if the answer has one."""
    value = response.headers.get("retry-after", "")
    if not value.isdigit():
        return None
    seconds = int(value)
    if seconds < 60:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def open_client(url: str, token: str | None) -> httpx.AsyncClient:
    """An HTTP client for the API at `url`, sending `token` as a bearer token (none: a `--dev` server)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=_TIMEOUT)


async def create_session(http: httpx.AsyncClient) -> str:
    """A new chat session's id; the server titles it after the first message."""
    with _http_errors():
        response = await http.post("/api/chat/sessions", json={})
        await _raise_for_error(response)
    return str(response.json()["id"])


async def check_session(http: httpx.AsyncClient, session_id: str) -> str:
    """`session_id`, once the server confirms it exists and belongs to the caller."""
    with _http_errors():
        await _raise_for_error(await http.get(f"/api/chat/sessions/{session_id}"))
    return session_id


async def send(http: httpx.AsyncClient, session_id: str, message: str, out: TextIO) -> None:
    """Send `message` to the session and write the reply to `out` as it streams, ending with a newline.

    Each call is a new message (a fresh `client_message_id`). Cancelling it only stops the reading: the server
    goes on with the reply until `cancel` stops it.
    """
    body = {"message": message, "client_message_id": str(uuid.uuid4())}
    screen = _Screen(out)
    calls: dict[str, dict[str, Any]] = {}
    try:
        with _http_errors():
            async with http.stream("POST", f"/api/chat/sessions/{session_id}/stream", json=body) as response:
                await _raise_for_error(response)
                async for chunk in iter_chunks(response):
                    kind, call_id = chunk.get("type"), chunk.get("toolCallId")
                    if kind == "tool-input-available" and isinstance(call_id, str):
                        calls[call_id] = chunk
                    shown = render(chunk, calls.get(call_id) if isinstance(call_id, str) else None)
                    if kind == "text-delta":
                        screen.text(shown)
                    else:
                        screen.line(shown)
    finally:
        screen.end()


async def cancel(http: httpx.AsyncClient, session_id: str) -> str:
    """Stop the session's running reply on the server; returns its status (`cancelled`, or `idle` if none ran).

    The server answers once the reply has ended and its partial text is stored, so the next message is accepted.
    """
    with _http_errors():
        response = await http.post(f"/api/chat/sessions/{session_id}/cancel")
        await _raise_for_error(response)
    return str(response.json().get("status", "unknown"))


async def interruptible(coro: Awaitable[T]) -> T:
    """Await `coro` as a task that Ctrl-C cancels; raises `Interrupted` when it does.

    Outside these waits Ctrl-C keeps its usual effect (KeyboardInterrupt).
    """
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread: Ctrl-C stays KeyboardInterrupt
        return await task
    try:
        await asyncio.wait([task])
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        task.cancel()
    if task.cancelled():
        raise Interrupted
    return task.result()


async def read_line(prompt: str) -> str:
    """`input(prompt)` without blocking the event loop; raises EOFError at the end of input.

    The read runs in a daemon thread rather than `asyncio.to_thread`: nothing can stop a pending `input()`, and
    the default executor's threads are joined when `asyncio.run` ends, so a Ctrl-C at the prompt would leave the
    program waiting for one more Enter.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[str] = loop.create_future()

    def settle(line: str | None, error: BaseException | None) -> None:
        if result.done():
            return
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(line or "")

    def read() -> None:
        line, error = None, None
        try:
            line = input(prompt)
        except BaseException as e:  # EOFError, or a closed stdin: the prompt loop decides
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, line, error)

    threading.Thread(target=read, name="copilot-chat-input", daemon=True).start()
    return await result


async def chat(url: str, token: str | None, session_id: str | None = None, out: TextIO | None = None) -> int:
    """The prompt loop of `copilot chat`; returns the exit status.

    `/new` starts a new session and `/quit`, end of input or Ctrl-C at the prompt leave. Ctrl-C during a reply
    stops it on the server (otherwise the server would go on generating it and refuse the next message with 409)
    and returns to the prompt; a second Ctrl-C while it is being stopped, or at the prompt, leaves.
    """
    out = out or sys.stdout
    async with open_client(url, token) as http:
        try:
            session_id = await (check_session(http, session_id) if session_id else create_session(http))
        except ChatClientError as e:
            print(f"! {e}", file=sys.stderr)
            return 1
        print(f"session {session_id} at {url}; /new starts a new session, /quit leaves", file=out)
        while True:
            try:
                message = (await interruptible(read_line(_PROMPT))).strip()
            except (EOFError, Interrupted):
                print(file=out)
                return 0
            try:
                if message == "/quit":
                    return 0
                if message == "/new":
                    session_id = await create_session(http)
                    print(f"session {session_id}", file=out)
                elif message:
                    await interruptible(send(http, session_id, message, out))
            except Interrupted:
                if not await _stop_reply(http, session_id, out):
                    return 0
            except ChatClientError as e:
                print(f"! {e}", file=out)


async def _stop_reply(http: httpx.AsyncClient, session_id: str, out: TextIO) -> bool:
    """Cancel the reply the user interrupted; False if they pressed Ctrl-C again meanwhile (they want to leave)."""
    print("(stopping the reply; Ctrl-C again quits)", file=out)
    stopping = asyncio.ensure_future(cancel(http, session_id))
    try:
        status = await interruptible(asyncio.shield(stopping))
    except Interrupted:
        # Quit, but let the cancel reach the server first: otherwise the reply goes on and the session stays busy.
        with contextlib.suppress(ChatClientError, TimeoutError):
            await asyncio.wait_for(stopping, _QUIT_GRACE_SECONDS)
        print(file=out)
        return False
    except ChatClientError as e:
        print(f"! could not stop the reply: {e}", file=out)
        return True
    if status == "cancelled":
        print("(stopped; what was written so far is stored)", file=out)
    return True


def run(url: str, token: str | None, session_id: str | None = None) -> int:
    """Run `chat` to its end; a Ctrl-C that lands between waits also ends it, without a traceback."""
    try:
        return asyncio.run(chat(url, token, session_id))
    except KeyboardInterrupt:
        print()
        return 130
