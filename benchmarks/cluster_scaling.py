"""What spreading a study over Ray nodes costs, and what resuming a killed study costs.

1. Scaling: the same small study (a 2 × 2 τ × α grid of fig3_rte_cpu.yaml at one seed, no baselines) through
   ``selfd run --address`` on one Ray node with 2 CPUs, then on two nodes with 1 CPU each (the same 2 CPUs in
   all); nodes started with docker/ray-node.sh as the containers start them. Figures: wall seconds, trials per
   hour, and two nodes ÷ one node.
2. Resume: the study's driver (embedded Ray) is SIGKILLed with its process group once a trial has
   checkpointed an epoch; then ``selfd resume``. Figure: seconds from starting ``selfd resume`` to the resumed
   trial's next epoch in MLflow, next to that trial's own epoch time (the rest is what resuming costs).

    python benchmarks/cluster_scaling.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from study.net import free_port
from study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the study this benchmark was first measured on (docs/benchmarks.md): 2 epochs, so a trial can be killed after its first
OVERRIDES = ["baselines=[]", "seeds=[0]", "search.space.distill.tau.values=[1.0,3.0]",
             "search.space.distill.alpha.values=[1.0,2.0]", "training.epochs=2", "task.train_subset=480",
             "task.validation_subset=200", "task.test_subset=200"]
NODE = {"RAY_MEMORY_BYTES": str(4 * 1024**3), "RAY_OBJECT_STORE_BYTES": str(500 * 1024**2)}


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(cpus_per_node: list[int], logs: Path):
    """Ray nodes with docker/ray-node.sh (token auth on); yields the GCS address and the clients' environment."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    nodes, temps = [], []
    try:
        for index, cpus in enumerate(cpus_per_node):
            role = "head" if index == 0 else "worker"
            extra = {"RAY_PORT": str(port), "RAY_DASHBOARD_PORT": str(free_port())} if role == "head" else \
                {"RAY_HEAD": f"127.0.0.1:{port}", "RAY_TEMP_DIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
            temps += [extra["RAY_TEMP_DIR"]] if "RAY_TEMP_DIR" in extra else []
            nodes.append(subprocess.Popen([str(ROOT / "docker" / "ray-node.sh"), role], start_new_session=True,
                                          env={**env, **NODE, "RAY_NUM_CPUS": str(cpus), **extra},
                                          stdout=open(logs / f"node{index}.log", "w"), stderr=subprocess.STDOUT))
            wait_for_nodes(port, env, index + 1)
        yield f"127.0.0.1:{port}", env
    finally:
        for node in reversed(nodes):
            stop(node)
        for folder in temps:
            subprocess.run(["rm", "-rf", folder], check=False)


def wait_for_nodes(port: int, env: dict, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{port}"], env=env,
                                capture_output=True, text=True)
        if status.returncode == 0 and status.stdout.split("Active:")[-1].split("Pending:")[0].count("node_") >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"{count} Ray node(s) not up after {timeout} s")


def selfd_run(spec: Path, study_dir: Path, *options: str) -> list[str]:
    return [str(BIN / "selfd"), "run", str(spec), "--study-dir", str(study_dir), *options,
            *[arg for override in OVERRIDES for arg in ("--override", override)]]


def scaling(spec: Path, root: Path, layout: list[int]) -> dict:
    name = "x".join(map(str, layout))
    with cluster(layout, root) as (address, env):
        command = selfd_run(spec, root / name, "--address", address)
        print(f"$ {' '.join(command)}  # nodes with {layout} CPUs", file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
    trials = len(list((root / name / "tune").glob("search-*/run_trial_*")))
    return {"nodes": len(layout), "cpus_per_node": layout, "trials": trials, "wall_seconds": round(wall, 1),
            "trials_per_hour": round(trials / wall * 3600, 1)}


def resume_cost(spec: Path, root: Path) -> dict:
    study_dir = root / "resumed"
    driver = subprocess.Popen(selfd_run(spec, study_dir), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id, epochs_done = wait_for_checkpoint(study_dir, driver)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray, as a reboot would
        driver.wait()
    client = MlflowClient(json.loads((study_dir / "study.json").read_text())["tracking_uri"])
    print(f"$ selfd resume {study_dir}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    resumed = subprocess.Popen([str(BIN / "selfd"), "resume", str(study_dir)], stdout=subprocess.DEVNULL)
    while len(client.get_metric_history(run_id, "val_accuracy")) <= epochs_done:
        if resumed.poll() is not None:
            raise RuntimeError("selfd resume ended before the trial's next epoch")
        time.sleep(0.2)
    to_next_epoch = time.perf_counter() - started
    resumed.wait()
    epoch_seconds = [json.loads(line)["time_this_iter_s"] for path in
                     (study_dir / "tune").glob("search-*/run_trial_*/result.json")
                     for line in path.read_text().splitlines()]
    epoch = sorted(epoch_seconds)[len(epoch_seconds) // 2]
    return {"seconds_to_next_epoch": round(to_next_epoch, 1), "median_epoch_seconds": round(epoch, 1),
            "resume_overhead_seconds": round(to_next_epoch - epoch, 1), "resume_exit_code": resumed.returncode}


def wait_for_checkpoint(study_dir: Path, driver: subprocess.Popen, timeout: float = 900) -> tuple[str, int]:
    """A RUNNING trial that has checkpointed an epoch Tune's saved state knows: (its run id, epochs logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if (study_dir / "study.json").is_file():
            info = json.loads((study_dir / "study.json").read_text())
            client = MlflowClient(info["tracking_uri"])
            for run in client.search_runs([info["experiment_id"]], "attributes.status = 'RUNNING'"):
                trial = run.data.tags.get("selfd.trial_id")
                phase = study_dir / "tune" / run.data.tags.get("selfd.phase", "")
                states = " ".join(p.read_text() for p in phase.glob("experiment_state-*.json"))
                if trial and trial in states and any(phase.glob(f"run_trial_{trial}_*/checkpoint_*")):
                    return run.info.run_id, len(client.get_metric_history(run.info.run_id, "val_accuracy"))
        time.sleep(0.5)
    raise RuntimeError("no trial checkpointed before the driver ended")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "fig3_rte_cpu.yaml")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    load_spec(args.spec, OVERRIDES)  # bad input stops here, before any node starts

    with tempfile.TemporaryDirectory(prefix="selfd-scaling-") as scratch:
        root = Path(scratch)
        one, two = scaling(args.spec, root, [2]), scaling(args.spec, root, [1, 1])
        resume = resume_cost(args.spec, root)
    report = {
        "benchmark": "cluster_scaling",
        "spec": str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec),
        "overrides": OVERRIDES,
        "one_node_2_cpus": one,
        "two_nodes_1_cpu_each": two,
        "two_nodes_vs_one_trials_per_hour": round(two["trials_per_hour"] / one["trials_per_hour"], 3),
        "resume": resume,
    }
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
