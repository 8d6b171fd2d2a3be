#!/usr/bin/env bash
# The MLflow tracking server of docker/compose.yaml (and of the tests, on the host): runs, params and metrics in
# MLFLOW_BACKEND_STORE_URI (PostgreSQL in compose), artifacts served from MLFLOW_ARTIFACTS, job execution off.
#   MLFLOW_BACKEND_STORE_URI=postgresql://user:pass@postgres/mlflow docker/mlflow-server.sh
# Optional: MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000), MLFLOW_ARTIFACTS (./mlartifacts), MLFLOW_ALLOWED_HOSTS
# (MLflow's --allowed-hosts: the Host headers it answers, e.g. mlflow:5000,localhost:5000 when other containers
# and the host both connect), MLFLOW_WORKERS (MLflow's --workers, default 4: its request-serving processes; the
# tests use 1, which answers in about 9 s instead of 15 on a 2-core machine).
# Authentication (MLflow's basic-auth app) is on unless MLFLOW_AUTH=off. The admin, created at the first start,
# is MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (clients send the same pair as
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); users live in MLFLOW_AUTH_DATABASE_URI (default: sqlite
# next to the artifacts); MLFLOW_FLASK_SERVER_SECRET_KEY signs CSRF tokens (random per start when unset).
# Secrets stay in the environment, never in a file or on the command line (so MLFLOW_AUTH_DATABASE_URI must not
# hold a password: it goes into the config file MLflow reads).
set -euo pipefail

if [[ -z ${MLFLOW_BACKEND_STORE_URI:-} ]]; then
  echo "mlflow-server.sh: set MLFLOW_BACKEND_STORE_URI (postgresql://... or sqlite:///...)" >&2
  exit 2
fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # job workers take ~1.6 GB and studies need none
artifacts=${MLFLOW_ARTIFACTS:-./mlartifacts}

options=(--backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --serve-artifacts --artifacts-destination "$artifacts"
         --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}")
[[ -n ${MLFLOW_ALLOWED_HOSTS:-} ]] && options+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
[[ -n ${MLFLOW_WORKERS:-} ]] && options+=(--workers "$MLFLOW_WORKERS")

if [[ ${MLFLOW_AUTH:-on} != off ]]; then
  if [[ -z ${MLFLOW_AUTH_ADMIN_USERNAME:-} || -z ${MLFLOW_AUTH_ADMIN_PASSWORD:-} ]]; then
    echo "mlflow-server.sh: set MLFLOW_AUTH_ADMIN_USERNAME and MLFLOW_AUTH_ADMIN_PASSWORD (or MLFLOW_AUTH=off)" >&2
    exit 2
  fi
  mkdir -p "$artifacts"
  config=$(mktemp --suffix=.ini)  # MLflow reads the users' database from a config file; keep passwords out of it
  cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$(realpath "$artifacts")/../mlflow-auth.db}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  export MLFLOW_AUTH_CONFIG_PATH=$config
  export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
  options+=(--app-name basic-auth)
fi
exec mlflow server "${options[@]}"
