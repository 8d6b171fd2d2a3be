"""`selfd train`: bad config gives one line and exit code 2 before any model is loaded; a good one trains."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import FAST
from study.cli import main
from trainables import classification


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the CLI gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad config")

    monkeypatch.setattr(classification, "load_classifier", refuse)


def write_config(tmp_path, data):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def local_task(nli_jsonl, **fields):
    return {"name": "my_nli", "files": str(nli_jsonl),
            "columns": {"text": "premise", "text_pair": "claim", "label": "verdict"}, **fields}


BAD = {
    "unknown key": ({"training": {"epoch": 3}}, [], "training.epoch: unknown key"),
    "tau zero": ({}, ["distill.tau=0"], "distill.tau: Input should be greater than 0"),
    "alpha negative": ({}, ["distill.alpha=-0.5"], "distill.alpha: Input should be greater than or equal to 0"),
    "odd batch with reuse": ({"method": "static", "training": {"batch_size": 15}}, [],
                             "training.batch_size must be even"),
    "unknown method": ({"method": "distill"}, [], "method: Input should be"),
    "unknown rule": ({"distill": {"rule": "magic"}}, [], "unknown rule 'magic'"),
    "unknown task": ({"task": "boolqq"}, [], "unknown task 'boolqq'"),
    "bad override": ({}, ["distill.tau"], "not of the form key.path=value"),
    "unknown model": ({"model": "no-such-org/no-such-model", "task": "LOCAL"}, [], "no-such-org/no-such-model"),
    "missing model folder": ({"model": "./models/none", "task": "LOCAL"}, [], "model folder ./models/none does not exist"),
    "missing column": ({"task": "LOCAL", "columns": {"text": "premise", "label": "answer"}}, [],
                       "has no column 'answer'"),
    "label not in labels": ({"task": "LOCAL", "labels": ["maybe", "no"]}, [], "value 'yes'"),
    "labels do not match the head": ({"task": "LOCAL", "model": {"name": "minilm-l6", "num_labels": 3}}, [],
                                     "model.num_labels is 3 but task my_nli has 2 labels"),
    "missing data file": ({"task": {"name": "x", "files": "/no/such.jsonl", "columns": {"text": "a"}}}, [],
                          "no such file /no/such.jsonl"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_config_is_one_line_and_exit_2(case, tmp_path, nli_jsonl, capsys, monkeypatch, no_model_loading):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data, overrides, expected = BAD[case]
    data = json.loads(json.dumps(data))
    if data.get("task") == "LOCAL":
        data["task"] = local_task(nli_jsonl)
    for key in ("columns", "labels"):
        if key in data:
            data["task"][key] = data.pop(key)
    code = main(["train", str(write_config(tmp_path, data)), *[f"--override={o}" for o in overrides]])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfd: error: "), captured.err
    assert expected in lines[0]


def test_missing_and_malformed_config_files(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: {epochs: 2\n")
    assert main(["train", str(broken)]) == 2
    assert "invalid YAML at line" in capsys.readouterr().err


def test_selfd_train_prints_progress_and_a_json_summary(tmp_path):
    config = write_config(tmp_path, {"method": "dynamic", **FAST})
    result = subprocess.run(["selfd", "train", str(config), "--override", "training.log_every=2"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"best_val_accuracy", "epochs", "steps", "seconds"} <= set(summary)
    progress = [line for line in result.stderr.splitlines() if line.startswith("step")]
    assert len(progress) == summary["steps"] // 2 and "kd" in progress[-1] and "α" in progress[-1]
    evaluation = f"evaluation 1 at step {summary['steps']} of {summary['steps']} (epoch 1): val loss "
    assert any(line.startswith(evaluation) for line in result.stderr.splitlines()), result.stderr[-2000:]


def test_odd_batch_is_fine_without_reuse(tmp_path, capsys):
    config = write_config(tmp_path, {"method": "vanilla", **FAST, "training": {**FAST["training"], "batch_size": 7}})
    assert main(["train", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 7  # 48 samples in batches of 7


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_stop_signal_is_an_interrupt_that_names_its_signal_and_exit_code(name, code):
    """What `selfd run` and `resume` do on SIGTERM and SIGHUP, in a process without Ray (the study-level test is
    tests/test_resume.py): the signal raises KeyboardInterrupt, a second one does not interrupt the stop, and
    `main` prints one line and exits with 128 + the signal's number. While a Tune experiment runs, the signal
    calls Tune's own stop (its SIGUSR1 handler, stood in for by one that records the call) instead of raising,
    and the driver raises once the experiment returns."""
    script = f"""
import os, signal, sys, time
from study import cli, signals
def stopped(args):
    signals.stop_on_termination()
    os.kill(os.getpid(), signal.{name})
    time.sleep(5)
def twice(args):
    signals.stop_on_termination()
    try:
        os.kill(os.getpid(), signal.{name})
        time.sleep(5)
    except KeyboardInterrupt:
        os.kill(os.getpid(), signal.{name})  # ignored while stopping
        time.sleep(0.2)
        raise
def tune(args):
    signals.stop_on_termination()
    asked = []
    with signals.tune_stops_itself():
        signal.signal(signal.SIGUSR1, lambda *_: asked.append("stop"))  # as Tune's experiment loop does
        os.kill(os.getpid(), signal.{name})
        time.sleep(0.2)
    assert asked == ["stop"], asked
    signals.raise_if_stopped()
cli._validate = {{"once": stopped, "twice": twice, "tune": tune}}[sys.argv[1]]
sys.exit(cli.main(["validate", "x.yaml"]))
"""
    for how in ("once", "twice", "tune"):
        ran = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, timeout=60)
        assert ran.returncode == code and ran.stderr.strip() == f"selfd: stopped by {name}", ran.stderr
