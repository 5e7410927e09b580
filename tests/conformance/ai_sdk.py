"""Run SSE bodies through the real `ai` npm client (`assemble.mjs`) from Python tests.

`assemble(body)` returns what the browser would assemble; `violations(body)` merges the client's
complaints with our own, stricter `check_body`, so a test can assert a stream is clean in one line.
Tests are skipped, with a message, only when `node` is missing; `npm ci` runs when `node_modules`
is absent or holds another `ai` version than `package.json` pins.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from backend.chat.protocol_check import check_body

HERE = Path(__file__).resolve().parent
_INSTALL_LOCK = Path(tempfile.gettempdir()) / f"copilot-chat-npm-{zlib.crc32(bytes(HERE)):08x}.lock"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AI SDK conformance tests need Node 20+ (CI has it)")
    return node


def _ensure_node_modules() -> None:
    pinned = json.loads((HERE / "package.json").read_text())["dependencies"]["ai"]
    installed = HERE / "node_modules" / "ai" / "package.json"
    with _INSTALL_LOCK.open("w") as lock:  # pytest-xdist workers install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed.exists() and json.loads(installed.read_text())["version"] == pinned:
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("node is installed but npm is not: run `npm ci` in tests/conformance")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`npm ci` in {HERE} failed:\n{proc.stdout}\n{proc.stderr}")


def assemble(body: bytes) -> dict[str, Any]:
    """Feed `body` (exactly the bytes the server sent) to the `ai` client; return `assemble.mjs`'s JSON.

    Keys: `messages` (the assembled assistant UIMessage, from `readUIMessageStream`), `errors` (every
    `onError`, `{name, message}`), `violations` (errors not caused by an `error` chunk), `chat` (the
    `useChat` path: `status`, `error`, `finishReason`, `isError`, `message`) and `chunks` (as parsed).
    Like the client, processing stops at the first violation.
    """
    node = _node()
    _ensure_node_modules()
    proc = subprocess.run([node, str(HERE / "assemble.mjs")], input=body, capture_output=True, cwd=HERE, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"assemble.mjs failed ({proc.returncode}):\n{proc.stderr.decode()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def violations(body: bytes) -> list[str]:
    """Everything wrong with a complete response body: our `check_body` plus the `ai` client's errors."""
    client = [f"ai client: {v['name']}: {v['message']}" for v in assemble(body)["violations"]]
    return check_body(body) + client
