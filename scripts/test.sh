#!/usr/bin/env bash
# Install everything the tests need into .venv (and the AI SDK conformance harness with npm), then run the checks
# and the whole test suite against Postgres and Redis (TEST_DATABASE_URL / TEST_REDIS_URL, local defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

if command -v npm >/dev/null 2>&1; then
  (cd tests/conformance && npm ci --silent --no-audit --no-fund)
fi

.venv/bin/ruff check backend tests
.venv/bin/ruff format --check backend tests
.venv/bin/mypy
.venv/bin/pytest "$@"
