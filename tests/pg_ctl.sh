#!/usr/bin/env bash
# PostgreSQL's pg_ctl for the tests' throwaway server (pytest-postgresql): pg_ctl refuses to run as root, so as
# root it runs as the postgres user. PG_CTL names the real binary.
set -euo pipefail
if [[ $(id -u) == 0 ]]; then
  exec runuser -u postgres -- "$PG_CTL" "$@"
fi
exec "$PG_CTL" "$@"
