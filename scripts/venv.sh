# Sourced by serve.sh and test.sh: the project's .venv, (re)installed only when pyproject.toml changed.
#
# The package is installed in editable mode, so source changes need no reinstall; only its metadata
# (dependencies, entry points) does. A stamp in .venv/ records the hash of pyproject.toml and of what was installed
# ("." or ".[test]"); a start whose stamp matches skips pip entirely (pip resolving the dependencies takes seconds).

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

# ensure_installed TARGET: `pip install -e TARGET` unless the stamp says this pyproject.toml is already installed so.
ensure_installed() {
  local target=$1 stamp=.venv/.copilot-install-stamp wanted
  wanted="$target $(sha256sum pyproject.toml | cut -d' ' -f1)"
  # An install with the test extra also serves a plain one.
  if [ -f "$stamp" ] && grep -qxF -e "$wanted" -e "$target[test] ${wanted#* }" "$stamp" 2>/dev/null \
      && [ -x .venv/bin/copilot ]; then
    return 0
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$target"
  echo "$wanted" >"$stamp"
}
