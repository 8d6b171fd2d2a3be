#!/usr/bin/env bash
# The MLflow tracking server of docker/compose.yaml (and of the tests, on the host): runs, params and metrics in
# MLFLOW_BACKEND_STORE_URI (PostgreSQL in compose), artifacts served from MLFLOW_ARTIFACTS, job execution off.
#   MLFLOW_BACKEND_STORE_URI=postgresql://user:pass@postgres/mlflow docker/mlflow-server.sh
# Optional: MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000), MLFLOW_ARTIFACTS (./mlartifacts), MLFLOW_ALLOWED_HOSTS
# (MLflow's --allowed-hosts: the Host headers it answers, e.g. mlflow:5000,localhost:5000 when other containers
# and the host both connect).
set -euo pipefail

if [[ -z ${MLFLOW_BACKEND_STORE_URI:-} ]]; then
  echo "mlflow-server.sh: set MLFLOW_BACKEND_STORE_URI (postgresql://... or sqlite:///...)" >&2
  exit 2
fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # job workers take ~1.6 GB and studies need none

options=(--backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --serve-artifacts
         --artifacts-destination "${MLFLOW_ARTIFACTS:-./mlartifacts}"
         --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}")
[[ -n ${MLFLOW_ALLOWED_HOSTS:-} ]] && options+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
exec mlflow server "${options[@]}"
