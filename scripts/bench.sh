#!/usr/bin/env bash
# The benchmark in one command (docs/benchmarks.md): installs copilot-chat with the `bench` extras (matplotlib,
# py-spy) into .venv and LiteLLM proxy into its own virtualenv (.bench/litellm-venv), then runs
# `python -m bench "$@"` (`--quick` for a run of under two minutes). It starts its own mock model, service and
# LiteLLM on loopback and uses the PostgreSQL and Redis on 127.0.0.1 (BENCH_DATABASE_URL, BENCH_REDIS_URL).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[bench]'

# LiteLLM proxy, the peer measured beside the service (pinned: see scripts/litellm_venv.sh).
source scripts/litellm_venv.sh
if [[ " $* " != *" --no-litellm "* ]]; then
  ensure_litellm
fi

exec .venv/bin/python -m bench "$@"
