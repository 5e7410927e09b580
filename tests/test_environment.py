"""The tests run apart from the developer's shell: model and analytics keys, service settings and storage URLs set
there never reach the tests' settings (tests/conftest.py scrubs them at import), while the tests' own switches
(`COPILOT_TEST_DB`, `TEST_*`) stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backend.config import Settings

ROOT = Path(__file__).resolve().parents[1]

LEAKS = {
    "OPENAI_API_KEY": "sk-leak",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/leak",
    "LANGFUSE_PUBLIC_KEY": "pk-lf-leak",
    "LANGFUSE_SECRET_KEY": "sk-lf-leak",
    "LANGFUSE_HOST": "http://127.0.0.1:9/langfuse",
    "POSTHOG_API_KEY": "phc_leak",
    "COPILOT_MODEL": "leaky-model",
    "COPILOT_ENVIRONMENT": "production",
    "DATABASE_URL": "postgresql://leak@127.0.0.1:9/leak",
    "REDIS_URL": "redis://127.0.0.1:9/0",
}


def test_settings_of_the_tests_see_nothing_of_the_shell() -> None:
    """Also the probe of the test below, run in a process whose environment holds `LEAKS`."""
    assert not [name for name in LEAKS if name in os.environ]
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.llm_api_key is None and settings.llm_base_url is None
    assert settings.langfuse_public_key is None and settings.langfuse_secret_key is None
    assert settings.langfuse_host is None and settings.posthog_api_key is None
    assert settings.model == Settings.model_fields["model"].default
    assert settings.environment == Settings.model_fields["environment"].default
    assert settings.database_url is None and settings.redis_url is None


def test_keys_in_the_shell_do_not_leak_into_a_test_run() -> None:
    env = {**os.environ, **LEAKS, "COPILOT_TEST_DB": "copilot_test_kept", "TEST_KEPT": "1"}
    probe = f"{Path(__file__).relative_to(ROOT)}::test_settings_of_the_tests_see_nothing_of_the_shell"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe, "tests/test_environment.py::test_kept"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout


def test_kept() -> None:
    """The tests' own switches survive the scrub (checked when the test above sets them)."""
    if os.environ.get("TEST_KEPT") == "1":
        assert os.environ.get("COPILOT_TEST_DB") == "copilot_test_kept"
