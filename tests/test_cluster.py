"""A real two-node Ray cluster on this machine, started with the containers' entrypoint (docker/ray-node.sh)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from test_study import TINY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # ray, selfd and shellcheck of this environment
NODE_LIMITS = {"RAY_NUM_CPUS": "1", "RAY_MEMORY_BYTES": str(2 * 1024**3), "RAY_OBJECT_STORE_BYTES": str(200 * 1024**2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the node's process group as `docker stop` would, SIGKILL what is left after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children (gcs_server, raylet) share the group
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head and one worker, 1 CPU each, token auth on: yields (GCS address, client environment)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    logs = tmp_path_factory.mktemp("nodes")
    nodes = []
    try:
        for role, extra in (("head", {"RAY_PORT": str(port), "RAY_DASHBOARD_PORT": str(free_port())}),
                            ("worker", {"RAY_HEAD": f"127.0.0.1:{port}"})):
            nodes.append(subprocess.Popen([str(ROOT / "docker" / "ray-node.sh"), role],
                                          env={**env, **NODE_LIMITS, **extra}, start_new_session=True,
                                          stdout=open(logs / f"{role}.log", "w"), stderr=subprocess.STDOUT))
            if role == "head":
                wait_for_nodes(port, env, 1)
        wait_for_nodes(port, env, 2)
        yield f"127.0.0.1:{port}", env
    finally:
        for node in reversed(nodes):
            stop(node)


def wait_for_nodes(port: int, env: dict, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(["ray", "status", "--address", f"127.0.0.1:{port}"], env=env,
                                capture_output=True, text=True)
        active = status.stdout.split("Active:")[-1].split("Pending:")[0]
        if status.returncode == 0 and active.count("node_") >= count:
            return
        time.sleep(2)
    raise AssertionError(f"{count} Ray node(s) not up after {timeout} s: {status.stdout}{status.stderr}")


def test_entrypoint_scripts_are_shellcheck_clean():
    scripts = sorted((ROOT / "docker").glob("*.sh"))
    assert scripts
    result = subprocess.run([str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_entrypoint_refuses_a_node_without_the_token():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    result = subprocess.run([str(ROOT / "docker" / "ray-node.sh"), "head"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "RAY_AUTH_TOKEN" in result.stderr


def test_study_trials_run_on_both_nodes(cluster, tmp_path):
    address, env = cluster
    spec = {**TINY, "name": "two_nodes", "baselines": [], "seeds": [0],
            "task": {**TINY["task"], "train_subset": 32}, "training": {**TINY["training"], "epochs": 1}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "study"
    result = subprocess.run(["selfd", "run", str(path), "--study-dir", str(study_dir), "--address", address],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["selfd.node_id"] for r in children}) == 2  # one CPU per node: both nodes trained
