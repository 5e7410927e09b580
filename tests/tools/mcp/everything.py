"""The official reference server `@modelcontextprotocol/server-everything` (npm, pinned in `npm/package.json`), run
over stdio. It speaks the handshake-era protocol (2025-11-25), unlike the SDK's own servers in `servers.py`.

`npm ci` runs when `npm/node_modules` is absent or holds another version; tests skip, with a message, only when
`node` is missing.
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

HERE = Path(__file__).resolve().parent / "npm"
PACKAGE = "@modelcontextprotocol/server-everything"
_INSTALL_LOCK = Path(tempfile.gettempdir()) / f"copilot-chat-mcp-npm-{zlib.crc32(bytes(HERE)):08x}.lock"


def everything_config(**extra: Any) -> dict[str, Any]:
    """The `mcpServers` entry that starts server-everything over stdio."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the server-everything tests need Node 20+ (CI has it)")
    _ensure_installed()
    entry = HERE / "node_modules" / PACKAGE / "dist" / "index.js"
    return {"command": node, "args": [str(entry), "stdio"], **extra}


def _ensure_installed() -> None:
    pinned = json.loads((HERE / "package.json").read_text())["dependencies"][PACKAGE]
    manifest = HERE / "node_modules" / PACKAGE / "package.json"
    with _INSTALL_LOCK.open("w") as lock:  # pytest-xdist workers install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.exists() and json.loads(manifest.read_text())["version"] == pinned:
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"node is installed but npm is not: run `npm ci` in {HERE}")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`npm ci` in {HERE} failed:\n{proc.stdout}\n{proc.stderr}")
