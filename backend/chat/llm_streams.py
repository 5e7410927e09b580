"""The body of a streamed model reply, read over aiohttp where it can be: HTTP/1.1 parsed in C as the bytes come.

Every token of a reply is one read of the model's connection. Through the SDK's client a read crosses httpx,
httpcore and h11, pure Python: per token a state machine, a chunked-body reader and a stack of async iterators.
aiohttp parses the response in C (llhttp) and hands the body over as it arrives: `python -m bench.model_reads`
measured 86 against 46.5 ms of CPU per 1,000 model events at 100 streams, and 1.6 against 0.5 ms from a request to
its first event (docs/benchmarks.md, issue 17 item 19).

The request is still the SDK's: its URL and headers (authentication, user agent, organization and project) are
built by the SDK's client, once per path; a status of 400 or more becomes the SDK's own error (the
`APIStatusError` subclass for the status, with the body and headers); a broken connection is one of httpx's
transport errors. So `llm_errors.translate` and the retry rules read every failure as they did. TLS uses the SDK
client's own SSL context (the same trust store), connecting races the host's addresses 250 ms apart (RFC 8305, as
`llm_http` does), the connect timeout is the SDK's.

Only streamed calls go this way, and only to a model that no proxy stands before: a proxy from the environment
(or a mount of the client) keeps the SDK's client for everything, with its proxy support. Non-streamed calls
(titles, summaries) always use the SDK's client: one response each, nothing per token to save.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import aiohttp
import httpx2
import openai
from openai._models import FinalRequestOptions

from backend.chat.llm_errors import TRANSPORT_ERRORS
from backend.chat.llm_http import HAPPY_EYEBALLS_DELAY

_DRAIN_SECONDS = 0.1

_AIOHTTP_ERRORS = (aiohttp.ClientError, ConnectionError)
"""What aiohttp raises for a connection that fails; raised on as httpx's errors."""


class StreamedReply(Protocol):
    """One streamed response whose head is in: its body's bytes as they come. `drain` after `[DONE]`, then `close`
    (a connection whose body was read to its end goes back to the pool, any other is closed)."""

    request: httpx2.Request
    """The request as the SDK's errors name it (an in-stream error is an `openai.APIError` on it)."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def drain(self) -> None:
        """Read what follows `[DONE]`, normally only the end of the body, so that the connection can be reused."""

    async def close(self) -> None: ...


class HttpxReply:
    """A reply read through the SDK's client (a proxied model)."""

    def __init__(self, response: httpx2.Response) -> None:
        self.request = response.request
        self._response = response
        self._chunks = response.aiter_bytes()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def drain(self) -> None:
        if self._response.http_version == "HTTP/1.1":  # HTTP/2 streams need no draining to be reused
            await read_to_end(self._chunks)

    async def close(self) -> None:
        await self._response.aclose()


class _AiohttpReply:
    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self.request = request
        self._response = response
        self._chunks = _body(response)

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def drain(self) -> None:
        await read_to_end(self._chunks)

    async def close(self) -> None:
        self._response.release()


async def _body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except _AIOHTTP_ERRORS as e:
        raise httpx2.ReadError(f"the model's connection broke: {e}") from e


async def read_to_end(chunks: AsyncIterator[bytes]) -> None:
    """Bounded: a server that keeps the body open after `[DONE]` costs 0.1 s, and then its connection is closed."""
    with contextlib.suppress(TimeoutError, *TRANSPORT_ERRORS):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in chunks:
                pass


class ModelStreams:
    """Opens the model's streamed replies: over aiohttp, or through the SDK's client when a proxy applies."""

    def __init__(self, sdk: openai.AsyncOpenAI, http: httpx2.AsyncClient, connect_timeout: float | None) -> None:
        self._sdk = sdk
        self._http = http
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._requests: dict[str, tuple[str, list[tuple[str, str]], httpx2.Request]] = {}
        self.direct = _without_proxy(http, sdk.base_url)
        """Whether replies are read over aiohttp (no proxy applies to the model's URL)."""

    async def open(
        self, path: str, body: bytes, *, sdk_post: Callable[[], Awaitable[httpx2.Response]]
    ) -> StreamedReply:
        """POST `body` to `path` and return the streamed reply once its head is in. Raises the SDK's
        `APIStatusError` for a status of 400 or more, httpx's transport errors for a connection that fails.
        `sdk_post()` sends it through the SDK's client instead (a proxied model)."""
        if not self.direct:
            return HttpxReply(await sdk_post())
        url, headers, request = await self._request(path)
        session = self._session or self._open_session()
        try:
            response = await session.post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError as e:
            raise httpx2.ConnectError(str(e)) from e
        except TimeoutError as e:  # aiohttp's connect timeout
            raise httpx2.ConnectTimeout(str(e)) from e
        except _AIOHTTP_ERRORS as e:
            raise httpx2.ReadError(str(e)) from e
        if response.status >= 400:
            raise await self._status_error(response, request)
        return _AiohttpReply(response, request)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        # The SDK client's own context (its trust store, `SSL_CERT_FILE`, a `verify=` given); httpx2 keeps it on the
        # pool. Without it, aiohttp's default verification.
        pool = getattr(getattr(self._http, "_transport", None), "_pool", None)
        ssl_context = getattr(pool, "_ssl_context", None) or True
        connector = aiohttp.TCPConnector(
            limit=1000,  # the SDK's pool limits (`openai.DEFAULT_CONNECTION_LIMITS`)
            limit_per_host=0,
            keepalive_timeout=5.0,
            ssl=ssl_context,
            happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
            interleave=1,
            family=socket.AF_UNSPEC,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout, sock_read=None),
            auto_decompress=True,
            trust_env=False,  # proxies were decided above: `direct` means none applies
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    async def _request(self, path: str) -> tuple[str, list[tuple[str, str]], httpx2.Request]:
        """The URL and headers the SDK's client would send to `path`, built by it once."""
        known = self._requests.get(path)
        if known is None:
            options = FinalRequestOptions.construct(
                method="post", url=path, content=b"", security={"bearer_auth": True}
            )
            options = await self._sdk._prepare_options(options)
            request = self._sdk._build_request(options)
            # aiohttp writes its own length and the encodings it can decode.
            headers = [
                (name, value)
                for name, value in request.headers.multi_items()
                if name.lower() not in ("content-length", "accept-encoding", "host")
            ]
            known = self._requests[path] = (str(request.url), headers, httpx2.Request("POST", request.url))
        return known

    async def _status_error(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> openai.APIStatusError:
        try:
            content = await response.read()
        except _AIOHTTP_ERRORS:
            content = b""
        finally:
            response.release()
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers]
        as_httpx = httpx2.Response(response.status, headers=headers, content=content, request=request)
        return self._sdk._make_status_error_from_response(as_httpx)


def _without_proxy(http: httpx2.AsyncClient, base_url: httpx2.URL) -> bool:
    """Whether requests to `base_url` go straight to it: the client's default transport serves that URL (a proxy
    from the environment, or any mount, is a transport of its own)."""
    try:
        return http._transport_for_url(base_url) is http._transport
    except AttributeError:
        return False
