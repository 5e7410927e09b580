"""Run SSE bodies through the real `ai` npm client (`assemble.mjs`) from Python tests.

`assemble(body)` returns what the browser would assemble with `ai` 6 (`assemble(body, "ai5")` / `"ai7"`: with
`ai` 5 or 7, installed side by side as npm aliases, see `AI_CLIENTS`); `violations(body)` merges the client's
complaints with our own, stricter `check_body`, so a test can assert a stream is clean in one line.
Tests are skipped, with a message, only when `node` is missing; `npm ci` runs when `node_modules`
is absent or holds other versions than `package.json` pins.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.protocol_check import check_body

HERE = Path(__file__).resolve().parent

AI_CLIENTS = ("ai5", "ai", "ai7")
"""The `ai` packages the harness can run (5, 6 and 7); `ai` itself is v6, the default."""
_INSTALL_LOCK = Path(tempfile.gettempdir()) / f"copilot-chat-npm-{zlib.crc32(bytes(HERE)):08x}.lock"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AI SDK conformance tests need Node 20+ (CI has it)")
    return node


def _installed(package: str, spec: str) -> bool:
    """Whether `node_modules/<package>` holds the version `spec` pins (`6.0.1` or an alias `npm:ai@5.0.1`)."""
    manifest = HERE / "node_modules" / package / "package.json"
    return manifest.exists() and json.loads(manifest.read_text())["version"] == spec.rpartition("@")[2]


def _ensure_node_modules() -> None:
    pinned: dict[str, str] = json.loads((HERE / "package.json").read_text())["dependencies"]
    with _INSTALL_LOCK.open("w") as lock:  # pytest-xdist workers install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(_installed(package, spec) for package, spec in pinned.items()):
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("node is installed but npm is not: run `npm ci` in tests/conformance")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`npm ci` in {HERE} failed:\n{proc.stdout}\n{proc.stderr}")


def assemble(body: bytes, client: str = "ai") -> dict[str, Any]:
    """Feed `body` (exactly the bytes the server sent) to the `ai` client (`client`: one of `AI_CLIENTS`);
    return `assemble.mjs`'s JSON.

    Keys: `messages` (the assembled assistant UIMessage, from `readUIMessageStream`), `errors` (every
    `onError`, `{name, message}`), `violations` (errors not caused by an `error` chunk), `chat` (the
    `useChat` path: `status`, `error`, `finishReason`, `isError`, `message`) and `chunks` (as parsed).
    Like the client, processing stops at the first violation.
    """
    node = _node()
    _ensure_node_modules()
    if client not in AI_CLIENTS:
        raise ValueError(f"unknown ai client {client!r}; one of {AI_CLIENTS}")
    proc = subprocess.run(
        [node, str(HERE / "assemble.mjs"), client], input=body, capture_output=True, cwd=HERE, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"assemble.mjs failed ({proc.returncode}):\n{proc.stderr.decode()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def ui_messages_error(messages: list[dict[str, Any]], client: str = "ai") -> str | None:
    """What the `ai` client's own `safeValidateUIMessages` finds wrong with `messages` (`validate_messages.mjs`),
    or None when they are valid `UIMessage`s."""
    node = _node()
    _ensure_node_modules()
    if client not in AI_CLIENTS:
        raise ValueError(f"unknown ai client {client!r}; one of {AI_CLIENTS}")
    proc = subprocess.run(
        [node, str(HERE / "validate_messages.mjs"), client],
        input=json.dumps(messages).encode(),
        capture_output=True,
        cwd=HERE,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"validate_messages.mjs failed ({proc.returncode}):\n{proc.stderr.decode()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return None if result["success"] else f"{result['error']['name']}: {result['error']['message']}"


def violations(body: bytes, client: str = "ai") -> list[str]:
    """Everything wrong with a complete response body: our `check_body` plus the `ai` client's errors."""
    found = [f"{client} client: {v['name']}: {v['message']}" for v in assemble(body, client)["violations"]]
    return check_body(body) + found


async def chat_round_trip(plan: dict[str, Any], client: str = "ai") -> dict[str, Any]:
    """Run `chat_round_trip.mjs` (the real `Chat` of `client` against a live service, see its header for `plan`)
    and return its JSON: `status`, `error`, `messages`, `requests`, `finishes`, `data`, `approvals`.

    Async, so a service served in the test's own event loop (`LiveServer`) keeps answering meanwhile."""
    node = _node()
    _ensure_node_modules()
    if client not in AI_CLIENTS:
        raise ValueError(f"unknown ai client {client!r}; one of {AI_CLIENTS}")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(HERE / "chat_round_trip.mjs"),
        client,
        cwd=HERE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(plan).encode()), timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"chat_round_trip.mjs failed ({proc.returncode}):\n{err.decode()}")
    result: dict[str, Any] = json.loads(out)
    return result
