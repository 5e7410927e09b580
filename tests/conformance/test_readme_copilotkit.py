"""The README's CopilotKit runtime example, type-checked against the pinned current `@copilotkit/runtime`
(`tests/conformance/copilotkit/package.json`) with TypeScript: an API change of the runtime fails here.

Installs the pinned packages (about 300 MB, a minute) with `npm ci` the first time; skipped without Node."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "copilotkit"
README = Path(__file__).resolve().parents[2] / "README.md"
_INSTALL_LOCK = Path(tempfile.gettempdir()) / f"copilot-chat-npm-{zlib.crc32(bytes(HERE)):08x}.lock"

# What the README's snippets take as given (the reader's own code).
_DECLARED = {
    "copilotkit_route.ts": "declare function copilotChatTokenFor(req: Request): Promise<string>;\n",
    "http_agent.ts": "declare const token: string;\ndeclare const sessionId: string;\nexport {};\n",
}

pytestmark = pytest.mark.slow


def _ensure_node_modules() -> None:
    pinned: dict[str, str] = json.loads((HERE / "package.json").read_text())["dependencies"]
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifests = {name: HERE / "node_modules" / name / "package.json" for name in pinned}
        if all(m.exists() and json.loads(m.read_text())["version"] == pinned[n] for n, m in manifests.items()):
            return
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`npm ci` in {HERE} failed:\n{proc.stdout}\n{proc.stderr}")


def readme_snippets() -> dict[str, str]:
    """The README's TypeScript blocks of the AG-UI section, by the file name they are checked as."""
    blocks = re.findall(r"```ts\n(.*?)```", README.read_text(), flags=re.S)
    route = [b for b in blocks if "@copilotkit/runtime" in b]
    agent = [b for b in blocks if "new HttpAgent" in b and "@copilotkit/runtime" not in b]
    assert len(route) == 1 and len(agent) == 1, "the README's AG-UI section lost one of its two examples"
    return {"copilotkit_route.ts": route[0], "http_agent.ts": agent[0]}


def test_readme_copilotkit_example_type_checks() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    _ensure_node_modules()
    out = HERE / "readme"
    out.mkdir(exist_ok=True)
    for name, code in readme_snippets().items():
        (out / name).write_text(_DECLARED[name] + code)
    tsc = HERE / "node_modules" / "typescript" / "bin" / "tsc"
    proc = subprocess.run([node, str(tsc), "-p", str(HERE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
