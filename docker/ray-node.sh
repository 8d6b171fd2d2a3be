#!/usr/bin/env bash
# One Ray node in the foreground: the main process of the head and worker containers, and what the tests start
# on the host. Every node and every client must share RAY_AUTH_TOKEN (token auth is on unless
# RAY_AUTH_MODE=disabled is set everywhere).
#   RAY_AUTH_TOKEN=... docker/ray-node.sh head                        # GCS on $RAY_PORT (6379)
#   RAY_AUTH_TOKEN=... RAY_HEAD=head:6379 docker/ray-node.sh worker
# Optional: RAY_NUM_CPUS, RAY_NUM_GPUS, RAY_MEMORY_BYTES, RAY_OBJECT_STORE_BYTES (default: Ray's, 30 % of RAM
# each, too much for several nodes on one machine), RAY_NODE_IP, RAY_TEMP_DIR (give each node on a shared
# machine its own: nodes sharing one unpack each job's code over the others' copy), RAY_AGENT_PORT (the node's
# dashboard agent, which takes job submissions: Ray's default 52365 serves one node a machine; give each node on a
# shared machine its own, or the agent of a node started after another finds it taken and the Jobs API answers
# "No available agent to submit job"); head only: RAY_PORT, RAY_DASHBOARD_HOST
# (127.0.0.1), RAY_DASHBOARD_PORT (8265). SIGTERM stops the node: within a few seconds, as selfd turns off
# Ray's drain on SIGTERM (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0; Ray's default waits up to 30 s for Ray Serve
# to move its replicas, and selfd runs no Serve; a trial on a stopped node is retried from its checkpoint).
set -euo pipefail

role=${1:-}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
if [[ $role != head && $role != worker ]]; then
  echo "usage: ray-node.sh head|worker" >&2
  exit 2
fi
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
  echo "ray-node.sh: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH): every node and client needs the same token" >&2
  exit 2
fi

options=(--block --disable-usage-stats)
[[ -n ${RAY_NUM_CPUS:-} ]] && options+=(--num-cpus="$RAY_NUM_CPUS")
[[ -n ${RAY_NUM_GPUS:-} ]] && options+=(--num-gpus="$RAY_NUM_GPUS")
[[ -n ${RAY_MEMORY_BYTES:-} ]] && options+=(--memory="$RAY_MEMORY_BYTES")
[[ -n ${RAY_OBJECT_STORE_BYTES:-} ]] && options+=(--object-store-memory="$RAY_OBJECT_STORE_BYTES")
[[ -n ${RAY_NODE_IP:-} ]] && options+=(--node-ip-address="$RAY_NODE_IP")
[[ -n ${RAY_TEMP_DIR:-} ]] && options+=(--temp-dir="$RAY_TEMP_DIR")
[[ -n ${RAY_AGENT_PORT:-} ]] && options+=(--dashboard-agent-listen-port="$RAY_AGENT_PORT")

if [[ $role == head ]]; then
  # the dashboard (and the Jobs API behind it) listens on loopback unless a container publishes it
  exec ray start --head --port="${RAY_PORT:-6379}" --dashboard-host="${RAY_DASHBOARD_HOST:-127.0.0.1}" \
    --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" "${options[@]}"
fi
if [[ -z ${RAY_HEAD:-} ]]; then
  echo "ray-node.sh: a worker needs RAY_HEAD=host:port of the head's GCS" >&2
  exit 2
fi
exec ray start --address="$RAY_HEAD" "${options[@]}"
