#!/usr/bin/env bash
# The lowest allowed versions of the direct dependencies (pyproject.toml's floors) against a fast subset of the tests:
# a floor that does not work fails here instead of in a user's older environment. uv resolves them
# (`--resolution lowest-direct`: each direct dependency at its floor, the rest as usual) into .venv-lowest.
#
# `.ci/run` runs it after scripts/test.sh. The subset is the fast unit tests (the whole suite takes ~15 min on two
# cores). Needs PostgreSQL and Redis like scripts/test.sh (TEST_DATABASE_URL / TEST_REDIS_URL, or the defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
tools=.venv-lowest-tools
if [ ! -x "$tools/bin/uv" ]; then
  "$PYTHON" -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet uv
fi
rm -rf .venv-lowest
"$tools/bin/uv" venv --quiet --python "$PYTHON" .venv-lowest
"$tools/bin/uv" pip install --quiet --python .venv-lowest/bin/python --resolution lowest-direct -e '.[test,embedded]'
"$tools/bin/uv" pip list --python .venv-lowest/bin/python | grep -iE '^(fastapi|starlette|pydantic|pydantic-settings|openai|httpx2|httpcore2|aiohttp|asyncpg|redis|tiktoken|uvicorn) '

# Unit and small end-to-end tests of every layer (protocol, messages, tokens, context, the model client, config,
# tools, the mock model, packaging, webhooks, log redaction with a live `copilot serve`, the turn summary); the slow
# suites stay with scripts/test.sh.
.venv-lowest/bin/python -m pytest -q -p no:cacheprovider \
  tests/chat/test_protocol.py tests/chat/test_messages.py tests/chat/test_tokens.py tests/chat/test_ui_stream.py \
  tests/chat/test_context.py tests/chat/test_system_prompt.py tests/chat/test_llm.py tests/chat/test_llm_http.py \
  tests/chat/test_llm_streams.py \
  tests/chat/test_usage.py \
  tests/test_config.py tests/test_webhooks.py tests/test_log_redaction.py tests/tools tests/test_layering.py \
  tests/test_packaging.py tests/devtools/test_mock_llm.py tests/devtools/test_mock_demo.py tests/test_compose.py \
  tests/test_scripts.py tests/api/test_ui_messages.py tests/observability/test_turn_tally.py tests/chat/test_agui_stream.py \
  tests/api/test_agui_history.py "$@"
