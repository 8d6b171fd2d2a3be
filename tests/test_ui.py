"""What users see and who may reach it: finished studies opened in a real `mlflow server` by headless Chromium
(Debian's, driven by Playwright), secrets kept out of every record, and `selfd ui` closed to the network unless
it authenticates."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from conftest import free_port, start_mlflow_server, stop_process_group
from study.report_page import SECTIONS
from test_study import TINY

BIN = Path(sys.executable).parent
SMALL = {**TINY, "seeds": [0], "baselines": ["vanilla", "dynamic"], "task": {**TINY["task"], "train_subset": 32},
         "training": {**TINY["training"], "epochs": 1},
         "search": {"algorithm": "grid", "space": {"distill.tau": {"values": [1.0, 3.0]},
                                                   "distill.alpha": {"values": [1.0]}}}}
# Distinctive values for every secret a study's environment can hold; none may appear in anything recorded.
SECRETS = {
    "HF_TOKEN": "hf_" + secrets.token_hex(16),
    "HUGGING_FACE_HUB_TOKEN": "hf_" + secrets.token_hex(16),
    "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(16),
    "RAY_AUTH_TOKEN": secrets.token_hex(16),
}


def run_selfd(*args, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "selfd"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def client_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "RAY_AUTH"))}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", **extra}


@pytest.fixture(scope="module")
def served_study(tmp_path_factory):
    """A study recorded to an authenticated MLflow server (docker/mlflow-server.sh, as in compose), run with
    hub tokens, the MLflow login and a Ray token (embedded Ray in token mode) in its environment."""
    folder = tmp_path_factory.mktemp("served")
    port, admin = free_port(), ("selfd-admin", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    server = start_mlflow_server(folder, port, admin=admin)
    url = f"http://127.0.0.1:{port}"
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SMALL, "name": "served", "mlflow": {"tracking_uri": url}}))
    env = client_env(**SECRETS, MLFLOW_TRACKING_USERNAME=admin[0], RAY_AUTH_MODE="token")
    try:
        study_dir = folder / "study"
        ran = run_selfd("run", str(spec), "--study-dir", str(study_dir), env=env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        shot = run_selfd("ui", str(study_dir), "--screenshots", env=env, timeout=300)
        assert shot.returncode == 0, shot.stderr[-3000:]
        yield {"dir": study_dir, "url": url, "admin": admin, "env": env, "server_folder": folder,
               "output": ran.stdout + ran.stderr + shot.stdout + shot.stderr}
    finally:
        stop_process_group(server)


@pytest.fixture(scope="module")
def local_study(local_ray, tmp_path_factory):
    """A one-trial study in its own sqlite store, as `selfd run` makes by default (run in this process, on the
    tests' shared Ray instance: the served study above runs the command itself)."""
    from study.cli import main

    folder = tmp_path_factory.mktemp("local")
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SMALL, "name": "local", "baselines": [],
                                    "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [1.0]}}}}))
    assert main(["run", str(spec), "--study-dir", str(folder / "study")]) == 0
    return folder / "study"


def child_run_names(study_dir: Path) -> set[str]:
    info = json.loads((study_dir / "study.json").read_text())
    runs = MlflowClient(info["tracking_uri"]).search_runs(
        [info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    return {run.info.run_name for run in runs}


def colors(path: Path) -> int:
    return len(np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0))


def test_browser_shows_the_parent_run_its_trials_heatmap_and_report(served_study, monkeypatch):
    study_dir = served_study["dir"]
    for name, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), served_study["admin"]):
        monkeypatch.setenv(name, value)
    children = child_run_names(study_dir)
    assert len(children) == 4  # vanilla, dynamic, static τ=1 and τ=3
    seen = json.loads((study_dir / "screenshots" / "seen.json").read_text())
    assert set(seen["run"]["child_runs"]) == children  # listed as links on the parent run's page
    width, height = seen["heatmap"]["natural_size"]
    assert width > 300 and height > 200 and seen["heatmap"]["colors"] > 100  # a drawn heatmap, not a broken image
    assert seen["report"]["title"] == "Study served"
    assert seen["report"]["sections"] == list(SECTIONS.values())
    # heatmap, parallel coordinates, gradient norms, DynSDPB α/τ (no importance for a grid)
    assert seen["report"]["images"] == 4
    for name in ("run.png", "heatmap.png", "report.png", "report_page.png"):
        assert colors(study_dir / "screenshots" / name) > 50, name
    page = (study_dir / "report" / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*)"', page)  # self-contained: figures inline, links inside the page
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links) and "<script" not in page
    info = json.loads((study_dir / "study.json").read_text())
    logged = [a.path for a in MlflowClient(served_study["url"]).list_artifacts(info["parent_run_id"], "report")]
    assert logged == ["report/index.html"]


def test_no_secret_is_written_to_params_tags_logs_results_or_the_report(served_study, monkeypatch):
    study_dir, folder = served_study["dir"], served_study["server_folder"]
    for name, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), served_study["admin"]):
        monkeypatch.setenv(name, value)
    records = {"selfd run and ui output": served_study["output"].encode()}
    # every file of the study (spec, study.json, Tune's trial params, results and logs, report, screenshots)
    # and of the server (its sqlite store: params, tags, metrics; its artifacts)
    for root in (study_dir, folder / "server-artifacts", folder / "server.db"):
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        assert files, root
        records |= {str(path): path.read_bytes() for path in files}
    assert any(path.endswith("results.csv") for path in records) and any("tune" in path for path in records)
    info = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(served_study["url"])
    for run in client.search_runs([info["experiment_id"]]):
        records[f"run {run.info.run_name}"] = json.dumps([run.data.params, run.data.tags]).encode()
    assert len([name for name in records if name.startswith("run ")]) == 5  # the parent and its 4 trials
    for name, value in SECRETS.items():
        leaks = [path for path, data in records.items() if value.encode() in data]
        assert not leaks, f"{name} written to {leaks}"


def test_ui_serves_loopback_only_unless_remote_access_is_authenticated(local_study):
    refused = run_selfd("ui", str(local_study), "--host", "0.0.0.0", env=client_env(), timeout=60)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    no_login = run_selfd("ui", str(local_study), "--host", "0.0.0.0", "--allow-remote", env=client_env(), timeout=60)
    assert no_login.returncode == 2 and "MLFLOW_TRACKING_PASSWORD" in no_login.stderr

    login = ("selfd-admin", secrets.token_hex(16))
    port = free_port()
    env = client_env(MLFLOW_TRACKING_USERNAME=login[0], MLFLOW_TRACKING_PASSWORD=login[1])
    ui = subprocess.Popen([str(BIN / "selfd"), "ui", str(local_study), "--host", "0.0.0.0", "--allow-remote",
                           "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # printed once the server is up and takes the login (the server's own lines come first)
        assert any(line.startswith("MLflow UI for") for line in ui.stdout), "selfd ui ended without serving"
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(api) == 401
        assert _status(api, (login[0], "wrong")) == 401
        assert _status(api, login) == 200
    finally:
        stop_process_group(ui)
    with pytest.raises(urllib.error.URLError):  # SIGTERM to `selfd ui` stops the server it started
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    assert (local_study / "mlflow-auth.db").is_file()
    wrong = run_selfd("ui", str(local_study), "--host", "0.0.0.0", "--allow-remote", "--port", str(free_port()),
                      env={**env, "MLFLOW_TRACKING_PASSWORD": "another"}, timeout=180)
    assert wrong.returncode == 2 and wrong.stderr.startswith("selfd: error: MLFLOW_TRACKING_PASSWORD is not the")
    assert len(wrong.stderr.strip().splitlines()) == 1  # said before any server starts


def test_screenshots_of_a_local_study_start_and_stop_their_own_server(local_study):
    shot = run_selfd("ui", str(local_study), "--screenshots", env=client_env(), timeout=300)
    assert shot.returncode == 0, shot.stderr[-3000:]
    seen = json.loads((local_study / "screenshots" / "seen.json").read_text())
    assert set(seen["run"]["child_runs"]) == child_run_names(local_study) and len(seen["run"]["child_runs"]) == 1
    assert "heatmap" not in seen  # one searched field: no heatmap, and the report says so
    assert seen["report"]["sections"] == list(SECTIONS.values()) and seen["report"]["images"] == 0
    assert "screenshot:" in shot.stdout


def _status(url: str, login: tuple[str, str] | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(login).encode()).decode()} if login else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_study_refused_by_the_mlflow_server_stops_before_it_starts(served_study, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SMALL, "name": "refused", "mlflow": {"tracking_uri": served_study["url"]}}))
    for login in ({}, {"MLFLOW_TRACKING_USERNAME": "selfd-admin", "MLFLOW_TRACKING_PASSWORD": "wrong"}):
        refused = run_selfd("run", str(spec), "--study-dir", str(tmp_path / "study"), env=client_env(**login),
                            timeout=120)
        assert refused.returncode == 2 and "refused this client" in refused.stderr, refused.stderr[-2000:]
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "study").exists()


def test_readme_walkthrough_shows_screenshots_this_code_made_and_says_what_they_show():
    """docs/screenshots/ is what `make demo` left in studies/fig3_rte_cpu/screenshots (run.png, ..., seen.json):
    the README shows those images and states what the browser saw on them."""
    from study.screenshots import VIEWPORT

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\((docs/screenshots/[^)]+)\)", readme)
    assert {Path(path).name for path in shown} >= {"run.png", "heatmap.png", "report.png"}
    for path in shown:
        with Image.open(root / path) as image:  # a screenshot.py viewport (or the whole page, as wide)
            assert image.format == "PNG" and image.width == VIEWPORT["width"], path
    seen = json.loads((root / "docs" / "screenshots" / "seen.json").read_text())
    readme = " ".join(readme.split())  # wrapped prose reads as one line
    assert f"{len(seen['run']['child_runs'])} child runs" in readme
    assert "{} × {} px".format(*seen["heatmap"]["natural_size"]) in readme
    assert all(title in readme for title in seen["report"]["sections"])
