#!/usr/bin/env bash
# The scale-out topology on loopback (docs/deployment.md): a Redis Cluster of 3 masters and 3 replicas, PgBouncer in
# transaction pooling mode in front of the PostgreSQL on 127.0.0.1:5432 (database `copilot_cluster`), the mock model,
# 3 pods and HAProxy in front of them on 127.0.0.1:7100. Its data and logs live under .cluster/.
#
#   scripts/cluster.sh up       install what is missing (Debian packages, .venv), start everything, say what runs where
#   scripts/cluster.sh status   what runs where, and what is down
#   scripts/cluster.sh down     stop everything it started
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-status}" = up ]; then
  missing=()
  for pair in redis-server:redis-server redis-cli:redis-tools pgbouncer:pgbouncer haproxy:haproxy psql:postgresql-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing ${missing[*]}"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "missing Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
      exit 1
    fi
  fi
  . scripts/venv.sh
  ensure_installed '.'
fi

exec .venv/bin/python -m tests.cluster.control "$@"
