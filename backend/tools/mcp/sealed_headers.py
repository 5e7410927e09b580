"""The headers of a session's MCP server (tokens, API keys) as stored: Fernet-encrypted (AES-128-CBC with an
HMAC-SHA256, `cryptography`) with `COPILOT_MCP_HEADERS_KEY`, so a database dump or backup does not hold them."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken


class HeadersUnreadable(Exception):
    """Stored headers that the configured key cannot decrypt (the key was changed)."""


class HeaderSealer:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, headers: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(headers).encode())

    def open(self, sealed: bytes) -> dict[str, str]:
        try:
            headers: dict[str, str] = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise HeadersUnreadable("the headers were encrypted with another COPILOT_MCP_HEADERS_KEY") from None
        return headers
