"""`copilot serve`'s log says each thing once: the demo model's embedded uvicorn server logs on the same
`uvicorn.error` logger as the app's server, and its lifecycle lines read as the app's own printed twice."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.devtools.mock_llm import MockLLMServer
from tests.conftest import REDIS_URL
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


async def test_embedded_mock_server_keeps_its_lifecycle_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with MockLLMServer() as llm, httpx.AsyncClient() as client:
        assert (await client.get(f"{llm.base_url}/models")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("uvicorn")]
    assert lines == []


@pytest.mark.slow
def test_serve_logs_the_server_lifecycle_once(migrated_database: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": migrated_database,
        "REDIS_URL": REDIS_URL,
    }  # no model: the demo model runs embedded, in-process
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--dev", "--port", str(port)],
        cwd=tmp_path,  # no stray .env is read
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Application startup complete" in output, output
    for line in ("Started server process", "Finished server process", "Uvicorn running on"):
        assert output.count(line) == 1, (line, output)
