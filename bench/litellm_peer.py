"""LiteLLM proxy as a peer: streaming from the same mock model, from its own virtualenv.

`scripts/bench.sh` installs it into `.bench/litellm-venv` (a pinned version, see there). It runs offline: the
model cost map comes from the package (`LITELLM_LOCAL_MODEL_COST_MAP=True`), there is no database, and one
model entry points at the mock with the `openai/` prefix. Requests carry the proxy's master key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.procs import Launched, launched

MASTER_KEY = "sk-bench-master-key"
MODEL = "mock-model"


def executable(root: Path) -> Path:
    return root / ".bench" / "litellm-venv" / "bin" / "litellm"


def unavailable_reason(root: Path) -> str | None:
    """Why LiteLLM cannot run (None when it can): the install step's error, or a missing virtualenv."""
    if executable(root).exists():
        return None
    error_file = root / ".bench" / "litellm-install.log"
    detail = ""
    if error_file.exists():
        detail = ": " + " | ".join(error_file.read_text(errors="replace").strip().splitlines()[-5:])
    return f"LiteLLM is not installed at {executable(root)}{detail} (scripts/bench.sh installs it)"


def _config(mock_base_url: str, workers: int) -> str:
    return f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {mock_base_url}
      api_key: bench
litellm_settings:
  telemetry: false
  drop_params: true
  request_timeout: 600
general_settings:
  master_key: {MASTER_KEY}
  disable_spend_logs: true
  disable_reset_budget: true
"""


@asynccontextmanager
async def litellm_proxy(root: Path, mock_base_url: str, port: int, *, workers: int = 1) -> AsyncIterator[Launched]:
    """LiteLLM proxy on 127.0.0.1:`port` until the block ends (`StartError` with its log if it cannot start)."""
    bench_dir = root / ".bench"
    config = bench_dir / "litellm-config.yaml"
    config.write_text(_config(mock_base_url, workers))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "LITELLM_", "DATABASE_URL", "REDIS_", "LANGFUSE_", "POSTHOG_"))
    }
    env |= {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    }
    args = [
        str(executable(root)),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(workers),
        "--telemetry",
        "False",
    ]
    async with launched(
        "litellm",
        args,
        env=env,
        ready_url=f"http://127.0.0.1:{port}/health/liveliness",
        log_dir=bench_dir / "logs",
        ready_timeout=180,
    ) as proc:
        yield proc


def version(root: Path) -> str | None:
    """The installed LiteLLM version, read from its package metadata in the virtualenv."""
    for meta in (root / ".bench" / "litellm-venv" / "lib").glob("python*/site-packages/litellm-*.dist-info/METADATA"):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None
