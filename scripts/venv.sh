# Sourced by serve.sh and test.sh: the project's .venv, (re)installed only when pyproject.toml changed.
#
# The package is installed in editable mode, so source changes need no reinstall; only its metadata
# (dependencies, entry points) does. A stamp in .venv/ records the hash of pyproject.toml and the extras installed
# with it; a start whose stamp has this hash and at least the extras it asks for skips pip entirely (pip resolving
# the dependencies takes seconds).

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

# The extras of a target, one a line, sorted: ".[test,embedded]" -> embedded, test.
_extras_of() {
  local inner=${1#.}
  inner=${inner#[}
  inner=${inner%]}
  printf '%s\n' "$inner" | tr ',' '\n' | sed '/^$/d' | sort -u
}

# ensure_installed TARGET (".", ".[embedded]", ".[test,embedded]"): `pip install -e` unless the stamp says this
# pyproject.toml is installed with these extras already. Extras installed earlier stay in the stamp (pip does not
# remove them), so serve.sh after test.sh installs nothing.
ensure_installed() {
  local target=$1 stamp=.venv/.copilot-install-stamp hash wanted have="" all
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  wanted=$(_extras_of "$target")
  if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$hash" ]; then
    have=$(tail -n +2 "$stamp")
    if [ -x .venv/bin/copilot ] && [ -z "$(comm -23 <(printf '%s\n' "$wanted" | sed '/^$/d') <(printf '%s\n' "$have" | sed '/^$/d'))" ]; then
      return 0
    fi
  fi
  all=$(printf '%s\n%s\n' "$wanted" "$have" | sed '/^$/d' | sort -u | paste -sd, -)
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${all:+[$all]}"
  printf '%s\n' "$hash" ${all//,/ } >"$stamp"
}
