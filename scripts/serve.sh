#!/usr/bin/env bash
# Install copilot-chat into .venv and run it. With no DATABASE_URL / REDIS_URL / model configured it starts an
# embedded PostgreSQL and Redis under .copilot-data/ and the built-in demo model, with development auth on.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/copilot serve --dev "$@"
