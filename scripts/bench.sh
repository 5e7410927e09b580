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

# LiteLLM is pinned: versions 1.82.7 and 1.82.8 on PyPI were a credential-stealing supply-chain compromise
# (BerriAI/litellm#24518); 1.82.6 was released before it. If it cannot be installed, the run says so (with the
# error from .bench/litellm-install.log) and measures the other peers.
LITELLM_SPEC=${BENCH_LITELLM_SPEC:-"litellm[proxy]==1.82.6"}
if [[ " $* " != *" --no-litellm "* ]]; then
  mkdir -p .bench
  if [ ! -x .bench/litellm-venv/bin/litellm ] || [ "$(cat .bench/litellm-venv/.spec 2>/dev/null)" != "$LITELLM_SPEC" ]; then
    echo "installing $LITELLM_SPEC into .bench/litellm-venv"
    rm -rf .bench/litellm-venv
    if ( "$PYTHON" -m venv .bench/litellm-venv \
         && .bench/litellm-venv/bin/python -m pip install --quiet --upgrade pip \
         && .bench/litellm-venv/bin/python -m pip install --quiet "$LITELLM_SPEC" ) > .bench/litellm-install.log 2>&1; then
      echo "$LITELLM_SPEC" > .bench/litellm-venv/.spec
    else
      rm -f .bench/litellm-venv/bin/litellm
      echo "LiteLLM could not be installed (.bench/litellm-install.log); the run reports it as unavailable"
    fi
  fi
fi

exec .venv/bin/python -m bench "$@"
