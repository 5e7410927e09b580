"""Run the real AG-UI client (`@ag-ui/client`'s `HttpAgent`, `agui_client.mjs`) against a live server from tests.

The server runs in the test's event loop, so Node is started as an asyncio subprocess (a blocking call would stall
the server it talks to). `node_modules` is installed as for the AI SDK harness (`ai_sdk.py`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conformance.ai_sdk import HERE, _ensure_node_modules, _node

AGUI_CLIENTS = ("@ag-ui/client", "agui-client-0")
"""`@ag-ui/client` 1.0, and 0.0.59 (an npm alias): the version the current `@copilotkit/runtime` (1.75) depends on,
so the `HttpAgent` a CopilotKit runtime actually runs."""


async def drive(**request: Any) -> dict[str, Any]:
    """What `agui_client.mjs` reports for `request` (see its header): the events the client applied, its messages,
    the error `runAgent` threw (None when the stream passed the client's verification) and the run's outcome."""
    node = _node()
    await asyncio.to_thread(_ensure_node_modules)
    proc = await asyncio.create_subprocess_exec(
        node,
        str(HERE / "agui_client.mjs"),
        cwd=HERE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"agui_client.mjs failed ({proc.returncode}):\n{stderr.decode()}")
    result: dict[str, Any] = json.loads(stdout)
    return result
