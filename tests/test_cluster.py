"""A real two-node Ray cluster on this machine, started with the containers' entrypoint (docker/ray-node.sh)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import free_port, start_mlflow_server, stop_process_group
from test_resume import wait_until
from test_study import TINY, study_runs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # ray, selfd and shellcheck of this environment
NODE_LIMITS = {"RAY_NUM_CPUS": "1", "RAY_MEMORY_BYTES": str(2 * 1024**3), "RAY_OBJECT_STORE_BYTES": str(200 * 1024**2)}


@dataclass
class Cluster:
    address: str  # the head's GCS, for `selfd run --address`
    jobs_url: str  # the head's job API, for `selfd submit`
    env: dict  # a client's environment: this venv first on PATH, the cluster's token
    nodes: list[subprocess.Popen]  # head, worker


@contextlib.contextmanager
def two_node_cluster(logs: Path, stop_timeout: float = 30):
    """Head and one worker, 1 CPU each, token auth on, each started with docker/ray-node.sh; at the end each node
    is stopped as `docker stop` would (SIGTERM to its main process), killed after ``stop_timeout`` seconds. The
    seconds each took to stop are appended to ``stop_seconds`` (head last)."""
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16),
           # as in compose: the nodes hold the MLflow server's credentials, so trials can log to it
           "MLFLOW_TRACKING_USERNAME": "selfd", "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(16)}
    # each node its own temp dir and agent port, as on its own machine (short: Ray's socket paths live under the
    # dir): nodes sharing a dir unpack job code over each other, the job API would start a job's driver against
    # whichever Ray instance of this machine (another test's) started last in it, and an agent whose port another
    # instance holds takes no jobs
    temps = [tempfile.mkdtemp(prefix="ray-", dir="/tmp") for _ in range(2)]
    nodes = []
    try:
        for role, extra in (("head", {"RAY_PORT": str(port), "RAY_DASHBOARD_PORT": str(dashboard),
                                      "RAY_TEMP_DIR": temps[0], "RAY_AGENT_PORT": str(free_port())}),
                            ("worker", {"RAY_HEAD": f"127.0.0.1:{port}", "RAY_TEMP_DIR": temps[1],
                                        "RAY_AGENT_PORT": str(free_port())})):
            nodes.append(subprocess.Popen([str(ROOT / "docker" / "ray-node.sh"), role],
                                          env={**env, **NODE_LIMITS, **extra}, start_new_session=True,
                                          stdout=open(logs / f"{role}.log", "w"), stderr=subprocess.STDOUT))
            if role == "head":
                wait_for_nodes(port, env, 1)
        wait_for_nodes(port, env, 2)
        yield Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env, nodes)
    finally:
        for node in reversed(nodes):
            stopping = time.monotonic()
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)  # docker stop signals the container's main process only
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=stop_timeout)
            stop_seconds.append(time.monotonic() - stopping)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)  # whatever of its group is left, as docker kills the container
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


stop_seconds: list[float] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with two_node_cluster(tmp_path_factory.mktemp("nodes")) as running:
        yield running
    # docker/ray-node.sh turns Ray's 30 s drain on SIGTERM off: each node stops in seconds (compose allows 30)
    assert max(stop_seconds[-2:]) < 10, stop_seconds


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


def test_mlflow_server_entrypoint_requires_a_login_and_answers_only_allowed_hosts(tmp_path, monkeypatch):
    import base64
    import urllib.error
    import urllib.request

    port, admin = free_port(), ("selfd", secrets.token_hex(16))
    server = start_mlflow_server(tmp_path, port, allowed_hosts=f"mlflow:{port},127.0.0.1:{port}", admin=admin)

    def status(host: str, login: tuple[str, str] | None = admin) -> int:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        headers = {"Host": host}
        if login:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
        try:
            return urllib.request.urlopen(urllib.request.Request(api, headers=headers), timeout=5).status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        assert status(f"mlflow:{port}") == 200  # another container, by service name
        assert status(f"elsewhere.example:{port}") == 403  # MLflow's host check (DNS rebinding)
        assert status(f"127.0.0.1:{port}", login=None) == 401
        assert status(f"127.0.0.1:{port}", login=(admin[0], "not-the-password")) == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        experiment = MlflowClient(f"http://127.0.0.1:{port}").create_experiment("through-the-entrypoint")
        assert MlflowClient(f"http://127.0.0.1:{port}").get_experiment(experiment).name == "through-the-entrypoint"
    finally:
        stop_process_group(server)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH")}
    refused = subprocess.run([str(ROOT / "docker" / "mlflow-server.sh")], capture_output=True, text=True,
                             env={**env, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'x.db'}"})
    assert refused.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr


def test_compose_file_names_every_service_and_keeps_ports_and_auth_locked():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"ray-head", "ray-worker", "mlflow", "postgres"}
    for name in ("ray-head", "ray-worker", "mlflow"):
        script = services[name]["command"][0]
        assert (ROOT / script).is_file(), script  # containers start through the scripts the tests run
    for name in ("ray-head", "ray-worker"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
        assert services[name]["shm_size"] and "studies:/studies" in services[name]["volumes"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
    assert services["ray-worker"]["environment"]["RAY_HEAD"] == "ray-head:6379"
    assert "@postgres:5432/" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    mlflow = services["mlflow"]["environment"]
    assert "MLFLOW_AUTH" not in mlflow  # the entrypoint's default: basic-auth on
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?")
    for name in ("ray-head", "ray-worker"):  # trials log to the authenticated server
        assert services[name]["environment"]["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?")


def test_kuberay_manifest_runs_the_image_with_token_auth_from_a_secret():
    cluster = yaml.safe_load((ROOT / "docker" / "kuberay.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == "2.60.0"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [group["template"]["spec"]["containers"][0] for group in cluster["spec"]["workerGroupSpecs"]]
    for container in (head, *workers):
        assert container["image"].startswith("selfd:")
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "selfd-ray-auth"
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "selfd-mlflow-auth"
        assert "/studies" in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.fixture
def mlflow_server(cluster, tmp_path, monkeypatch):
    """An authenticated server whose admin is the cluster's MLflow login (this test process logs in too)."""
    admin = (cluster.env["MLFLOW_TRACKING_USERNAME"], cluster.env["MLFLOW_TRACKING_PASSWORD"])
    for name, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), admin):
        monkeypatch.setenv(name, value)
    server = start_mlflow_server(tmp_path, port := free_port(), admin=admin)
    yield f"http://127.0.0.1:{port}"
    stop_process_group(server)


def test_submitted_study_succeeds_as_a_ray_job_with_its_runs_in_the_mlflow_server(cluster, mlflow_server, tmp_path):
    jobs_url, env = cluster.jobs_url, cluster.env
    spec = {**TINY, "name": "submitted", "baselines": [], "seeds": [0],
            "task": {**TINY["task"], "train_subset": 32}, "training": {**TINY["training"], "epochs": 1},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0]}}},
            "mlflow": {"tracking_uri": mlflow_server}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "on-the-cluster"

    def selfd(*args, timeout=60):
        return subprocess.run(["selfd", *args, "--address", jobs_url], env=env, capture_output=True, text=True,
                              timeout=timeout)

    submitted = selfd("submit", str(path), "--study-dir", str(study_dir))
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted.stdout.strip()
    followed = selfd("logs", job_id, "--follow", timeout=600)  # streams until the job ends, exits with its status
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-2000:]
    assert "report:" in followed.stdout and f"MLflow: {mlflow_server}/#/experiments/" in followed.stdout
    assert selfd("status", job_id).stdout.startswith(f"{job_id}: SUCCEEDED")
    assert selfd("stop", job_id).stdout.strip() == f"{job_id}: already ended"

    info = json.loads((study_dir / "study.json").read_text())
    assert info["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    # its two trials start together, one CPU per node: both nodes trained
    assert len({r.data.tags["selfd.node_id"] for r in children}) == 2
    assert client.get_run(info["parent_run_id"]).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(info["parent_run_id"])} >= {"results.csv", "summary.md"}


def test_a_stopped_job_ends_stopped_and_leaves_a_resumable_study(cluster, tmp_path):
    spec = {**TINY, "name": "stopped", "baselines": [], "seeds": [0], "training": {**TINY["training"], "epochs": 3}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "on-the-cluster"

    def selfd(*args):
        return subprocess.run(["selfd", *args, "--address", cluster.jobs_url], env=cluster.env,
                              capture_output=True, text=True, timeout=120)

    job_id = selfd("submit", str(path), "--study-dir", str(study_dir)).stdout.strip()
    wait_until(lambda: (study_dir / "tune").is_dir(), 300, "the study to start its trials")
    assert selfd("stop", job_id).stdout.strip() == f"{job_id}: stop requested"
    wait_until(lambda: "STOPPED" in selfd("status", job_id).stdout, 60, "the job to stop")
    assert json.loads((study_dir / "study.json").read_text())["finished"] is False  # `selfd resume` goes on


def test_job_commands_say_what_is_wrong_in_one_line(cluster, tmp_path):
    jobs_url, env = cluster.jobs_url, cluster.env
    unknown = subprocess.run(["selfd", "status", "raysubmit_nosuchjob", "--address", jobs_url], env=env,
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(["selfd", "status", "raysubmit_nosuchjob", "--address", jobs_url], env=no_token,
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "epochs": 0}}))
    invalid = subprocess.run(["selfd", "submit", str(bad_spec), "--address", jobs_url], env=env,
                             capture_output=True, text=True)
    assert invalid.returncode == 2 and "epochs" in invalid.stderr  # validated before anything is submitted


# Last in this module: it kills the shared cluster's worker node (the cluster's start is 20 s a time).
def test_a_trial_on_a_worker_node_that_dies_finishes_on_the_surviving_node(cluster, tmp_path):
    spec = {**TINY, "name": "node_dies", "baselines": [], "seeds": [0],
            "training": {**TINY["training"], "epochs": 3, "grad_norm_every": 0},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0]}}},
            "failure": {"max_retries": 2}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "study"
    listed = subprocess.run(["ray", "list", "nodes", "--address", cluster.jobs_url, "--format", "json"],
                            env=cluster.env, capture_output=True, text=True, check=True)
    nodes = [n for n in json.loads(listed.stdout) if n["state"] == "ALIVE"]
    assert len(nodes) == 2, nodes  # no test before this one took a node down
    head = next(n["node_id"] for n in nodes if n["is_head_node"])
    driver = subprocess.Popen(["selfd", "run", str(path), "--study-dir", str(study_dir), "--address",
                               cluster.address], env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def checkpointed_on_the_worker():
        if not (study_dir / "study.json").is_file():
            return None
        _, _, _, children = study_runs(study_dir)
        phase = study_dir / "tune" / "search-static"
        return next((c for c in children if c.data.tags["selfd.node_id"] != head
                     and any(phase.glob(f"run_trial_{c.data.tags['selfd.trial_id']}_*/checkpoint_*"))), None)

    try:
        victim = wait_until(checkpointed_on_the_worker, 300, "a checkpoint of the worker's trial", driver)
        os.killpg(cluster.nodes[1].pid, signal.SIGKILL)  # the worker node dies: its raylet and workers
        assert driver.wait(timeout=600) == 0
    finally:
        driver.kill()
    client, _, _, children = study_runs(study_dir)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    moved = client.get_run(victim.info.run_id)
    assert moved.data.tags["selfd.node_id"] == head  # restarted on the surviving node ...
    # ... from its checkpoint: epoch 1 was not trained (nor logged) again
    assert [m.step for m in client.get_metric_history(victim.info.run_id, "val_accuracy")] == [1, 2, 3]
