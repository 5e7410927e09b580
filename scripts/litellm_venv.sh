# Sourced by scripts/bench.sh and .ci/run: `ensure_litellm` installs LiteLLM proxy into its own virtualenv
# (.bench/litellm-venv), the peer the benchmark measures and the gateway tests/test_litellm_gateway.py runs the
# model path through. Kept apart from .venv: its dependencies must not change the service's.
#
# LiteLLM is pinned: versions 1.82.7 and 1.82.8 on PyPI were a credential-stealing supply-chain compromise
# (BerriAI/litellm#24518); 1.82.6 was released before it. If it cannot be installed, say so (with the error in
# .bench/litellm-install.log): the benchmark reports it as unavailable and the gateway test skips with the reason.
LITELLM_SPEC=${BENCH_LITELLM_SPEC:-"litellm[proxy]==1.82.6"}

ensure_litellm() {
  local python=${PYTHON:-python3}
  mkdir -p .bench
  if [ -x .bench/litellm-venv/bin/litellm ] && [ "$(cat .bench/litellm-venv/.spec 2>/dev/null)" = "$LITELLM_SPEC" ]; then
    return 0
  fi
  echo "installing $LITELLM_SPEC into .bench/litellm-venv"
  rm -rf .bench/litellm-venv
  if ( "$python" -m venv .bench/litellm-venv \
       && .bench/litellm-venv/bin/python -m pip install --quiet --upgrade pip \
       && .bench/litellm-venv/bin/python -m pip install --quiet "$LITELLM_SPEC" ) > .bench/litellm-install.log 2>&1; then
    echo "$LITELLM_SPEC" > .bench/litellm-venv/.spec
  else
    rm -f .bench/litellm-venv/bin/litellm
    echo "LiteLLM could not be installed (.bench/litellm-install.log)"
  fi
}
