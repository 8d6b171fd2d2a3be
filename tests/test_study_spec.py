"""Bad study specs and unusable targets: one line, exit code 2, before any trial or MLflow run exists."""

import copy
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.spec import load_spec
from test_study import TINY

SPECS = Path(__file__).parent.parent / "search_spaces"


def spec_with(**changes):
    spec = copy.deepcopy(TINY)
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf)
        else:
            node[leaf] = value
    return spec


BAD = {
    "unknown key": (spec_with(seed=[0]), "seed: unknown key"),
    "wrong type": (spec_with(max_concurrent_trials="two"), "max_concurrent_trials: Input should be a valid integer"),
    "empty space": (spec_with(search__space={}), "search.space: Dictionary should have at least 1 item"),
    "empty values": (spec_with(search__space={"distill.tau": {"values": []}}), "values is empty"),
    "tau not positive": (spec_with(search__space={"distill.tau": {"values": [0.0, 1.0]},
                                                  "distill.alpha": {"values": [1.0]}}),
                         "distill.tau: Input should be greater than 0"),
    "alpha negative": (spec_with(search__space={"distill.tau": {"values": [1.0]},
                                                "distill.alpha": {"values": [-1.0, 1.0]}}),
                       "distill.alpha: Input should be greater than or equal to 0"),
    "unknown searched field": (spec_with(search__space={"distill.temperature": {"values": [1.0]}}),
                               "distill.temperature: unknown key"),
    "range in a grid": (spec_with(search__space={"distill.tau": {"low": 1.0, "high": 3.0}}), "is a range"),
    "tpe without samples": (spec_with(search__algorithm="tpe"), "tpe needs num_samples"),
    "no methods": (spec_with(methods=[]), "methods: List should have at least 1 item"),
    "odd batch": (spec_with(training__batch_size=7), "training.batch_size must be even"),
    # each of these got past `selfd validate`, and the metric one past Ray's start and the first trial
    "metric the task never reports": (spec_with(metric="val_rougeL"),
                                      "metric: task epistemic_reasoning never reports val_rougeL"),
    "unknown task": (spec_with(task__name="no_such_task"), "unknown task 'no_such_task'"),
    "unknown model alias": (spec_with(model__name="minilm-l12"), "unknown model 'minilm-l12'"),
    "local model folder without config": (spec_with(model__name=str(Path(__file__).parent / "data")),
                                          "tests/data has no config.json"),
    "missing local data file": (spec_with(task__files="no-such.jsonl", task__columns={"text": "premise"}),
                                "task.files.train: no such file no-such.jsonl"),
    "asha that cannot stop a trial": (spec_with(scheduler={"type": "asha", "grace_period": 2}),
                                      "so ASHA could never stop one"),
    "lora on a classifier": (spec_with(model__lora={"r": 4}), "model.lora applies to decoder-only models"),
    "wrong label count": (spec_with(model__num_labels=3), "model.num_labels is 3 but task epistemic_reasoning has 2"),
    "two metrics": (spec_with(training__metric_for_best_model="val_loss"),
                    "training.metric_for_best_model (val_loss) differs from metric (val_accuracy)"),
    "tuned baselines that share no searched field": (spec_with(tune_baselines=True),
                                                     "tune_baselines: vanilla ignores every searched field"),
    "a method that is also a baseline": (spec_with(baselines=["vanilla", "static"]),
                                         "static is both in methods (searched) and in baselines"),
}


def assert_refused(capsys, study_dir, expected, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("selfd: error: "), err
    assert expected in err[0]
    # nothing was created: no MLflow store, no Tune experiment
    assert not (study_dir / "mlflow.db").exists() and not (study_dir / "tune").exists()


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_spec(case, tmp_path, capsys):
    spec, expected = BAD[case]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert_refused(capsys, tmp_path / "study", expected, ["validate", str(path)])
    assert_refused(capsys, tmp_path / "study", expected, ["run", str(path), "--study-dir", str(tmp_path / "study")])


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_unreachable_ray_address(tiny_spec, tmp_path, capsys):
    assert_refused(capsys, tmp_path / "study", "cannot reach the Ray cluster at 127.0.0.1:1",
                   ["run", str(tiny_spec), "--study-dir", str(tmp_path / "study"), "--address", "127.0.0.1:1"])


def test_unreachable_tracking_server(tiny_spec, tmp_path, capsys):
    assert_refused(capsys, tmp_path / "study", "MLflow tracking server http://127.0.0.1:1 is unreachable",
                   ["run", str(tiny_spec), "--study-dir", str(tmp_path / "study"),
                    "--override", "mlflow.tracking_uri=http://127.0.0.1:1"])


def test_tracking_server_that_is_not_healthy(tiny_spec, tmp_path, capsys):
    """A real HTTP server on loopback that is not an MLflow server (404 on /health)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}/not-mlflow"
        assert_refused(capsys, tmp_path / "study", "answered /health with HTTP 404: is it an MLflow tracking server?",
                       ["run", str(tiny_spec), "--study-dir", str(tmp_path / "study"),
                        "--override", f"mlflow.tracking_uri={uri}"])
    finally:
        server.shutdown()


def test_gpu_request_on_a_cluster_without_gpus(local_ray, tiny_spec, tmp_path, capsys):
    assert_refused(capsys, tmp_path / "study", "resources.gpu asks for 0.5 GPU per trial but the Ray cluster has 0",
                   ["run", str(tiny_spec), "--study-dir", str(tmp_path / "study"), "--override", "resources.gpu=0.5"])


@pytest.mark.parametrize("name", sorted(p.name for p in SPECS.glob("*.yaml") if p.name != "demo_train_cpu.yaml"))
def test_shipped_specs_are_valid_and_run_the_matched_control(name):
    spec = load_spec(SPECS / name)
    assert spec.name == name.removesuffix(".yaml")
    # vanilla_repeat makes the DLB methods' steps on their batches with α = 0: what distillation is judged against
    assert "vanilla_repeat" in spec.baselines
    # a spec that can reach a verdict confirms on seeds that chose nothing: the chosen cell's own luck stays out
    if spec.rerun_best or len(spec.seeds) >= 3:
        assert spec.rerun_best and not set(spec.seeds) & set(spec.confirmation_seeds if spec.adaptive
                                                             else spec.verdict_seeds), name


def test_controls_run_on_the_seeds_the_verdicts_compare(capsys):
    """With rerun_best, the fixed baselines run at its seeds, beside the re-runs, not at the search's."""
    from study import state as phases
    from study.runner import phase_trials

    spec = load_spec(SPECS / "fig3_rte_cpu.yaml")  # the grid at seed 0, its chosen cell re-run at seeds 1–3
    assert (spec.seeds, spec.verdict_seeds) == ([0], [1, 2, 3])
    planned = (phases.search("static"), phases.FIRST_ROUND, phases.confirm(2))
    assert [phase_trials(spec, phase) for phase in planned] == [9, 2 * 3 + 3, 2]
    assert main(["validate", str(SPECS / "fig3_rte_cpu.yaml"), "--override", "rerun_best=null"]) == 0
    assert main(["validate", str(SPECS / "fig3_rte_cpu.yaml")]) == 0
    without, with_reruns = capsys.readouterr().out.splitlines()
    assert without.endswith("9 search trials (grid, static), 2 baseline trials")
    assert with_reruns.endswith("9 search trials (grid, static), 6 baseline trials, 3 re-run trials, then up to 42 "
                                "confirmation trials in rounds of 1 seed (static vs vanilla_repeat)")


def test_tracking_uri_from_the_spec_then_mlflows_environment_then_the_study_dir(tmp_path, monkeypatch):
    from study.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(None, tmp_path) == "http://mlflow:5000"
    assert tracking_uri("http://other:5000", tmp_path) == "http://other:5000"


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:6379", "--address must be the Ray dashboard's URL"),  # a GCS address where the job API is meant
    ("http://127.0.0.1:9", "cannot reach the Ray job API at http://127.0.0.1:9"),
])
def test_submit_to_a_wrong_address(tiny_spec, address, message, capsys):
    assert main(["submit", str(tiny_spec), "--address", address]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_resume_and_sync_of_a_folder_that_is_not_a_study(tmp_path, capsys):
    for command in (["resume", str(tmp_path)], ["report", "--sync", str(tmp_path)]):
        assert main(command) == 2
        assert "is not a study directory" in capsys.readouterr().err


def test_a_model_family_without_the_head_selfd_adds_is_refused_by_name(tmp_path):
    """The head is looked up by the family's name (no model class imported for it): a ViT config has neither a
    sequence-classification nor a causal-LM class in transformers."""
    from transformers import AutoConfig

    from trainables.config import ModelConfig
    from trainables.errors import ConfigError
    from trainables.models import check_model_settings

    AutoConfig.for_model("vit", num_hidden_layers=2).save_pretrained(tmp_path)
    for causal, head in ((False, "sequence classification"), (True, "causal language model")):
        with pytest.raises(ConfigError, match=f"is a vit model, which transformers has no {head} class for"):
            check_model_settings(ModelConfig(name=str(tmp_path)), str(tmp_path), causal)
