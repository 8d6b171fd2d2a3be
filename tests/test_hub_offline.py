"""The hub path, offline and for real: the paper-scale specs run end to end on the CPU (fig3_rte and nlg_llama
here, fig3_boolq's data and model; all three, whole, in benchmarks/hub_offline.py) from a Hugging Face cache laid
out as `huggingface_hub` and `datasets` leave it (benchmarks/offline_hub.py: tiny random models under the real repo
ids, DeBERTa-v3's SentencePiece tokenizer, Llama's tokenizer.json, small data sets under the real dataset ids and
configs), with HF_HUB_OFFLINE=1. The same code reads a real cache.

The specs run as shipped but for sizes: examples (the cache's; a subset of the packaged strategyqa_gen), epochs,
lengths, CPU resources and, to fit `make test`, one cell of each τ × α grid at one seed."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from offline_hub import DEBERTA, LLAMA, build_cache, offline_environment, selfd_cache  # noqa: E402

SELFD = str(Path(sys.executable).parent / "selfd")
SMALL = ["--override", "training.epochs=1", "--override", "resources.cpu=1", "--override", "resources.gpu=0",
         "--override", "max_concurrent_trials=2", "--override", "training.log_every=2",
         "--override", "training.grad_norm_every=2"]
SIZES = {"fig3_rte.yaml": ["task.max_length=48"], "fig3_boolq.yaml": ["task.max_length=48"],
         "nlg_llama.yaml": ["task.max_length=96", "task.max_target_length=16", "task.train_subset=32",
                            "task.validation_subset=16"]}  # strategyqa_gen is packaged: 2,290 examples
ONE_CELL = ["--override", "search.space.distill.tau.values=[2.0]", "--override",
            "search.space.distill.alpha.values=[1.0]", "--override", "seeds=[0]", "--override", "rerun_best=null"]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub")
    build_cache(folder / "hf", examples=48)
    return offline_environment(folder / "hf", selfd_cache(folder / "selfd-cache"))


@pytest.mark.parametrize("spec, task, test_split", [
    ("fig3_rte.yaml", "rte", "validation"), ("nlg_llama.yaml", "strategyqa_gen", None)])
def test_a_paper_scale_spec_runs_end_to_end_from_an_offline_hub_cache(offline, tmp_path, spec, task, test_split):
    study_dir = tmp_path / "study"
    sizes = [part for size in SIZES[spec] for part in ("--override", size)]
    ran = subprocess.run([SELFD, "run", str(ROOT / "search_spaces" / spec), "--study-dir", str(study_dir), *SMALL,
                          *sizes, *ONE_CELL], env=offline, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-4000:]
    verdicts = [line for line in ran.stdout.splitlines() if line.startswith("verdict: ")]
    assert [line.split(":")[1].strip() for line in verdicts] == [
        "static vs vanilla_repeat", "static vs vanilla", "dynamic vs static"]
    assert all("no verdict (1 shared seed" in line for line in verdicts)
    results = (study_dir / "report" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 1 + 3  # the cell and the three baselines
    split = next(Path(offline["SELFD_CACHE"], "tasks").glob(f"{task}-*/split.json"))
    record = json.loads(split.read_text())
    if test_split:  # GLUE/SuperGLUE hide their test labels: the official validation split is the test split
        assert record["split"]["made"] == {"train": "the source's own split", "test": "the source's own split",
                                           "validation": "carved from train: 0.2 of it, seed 0"}
        assert record["sizes"]["test"] == 12 and record["sizes"]["train"] + record["sizes"]["validation"] == 48
        assert all(count > 0 for count in record["label_counts"]["test"])


def test_fig3_boolq_s_model_and_data_load_from_the_offline_cache_with_the_official_validation_as_test(offline):
    """fig3_boolq.yaml runs fig3_rte.yaml's code on another SuperGLUE config (its whole study runs in
    benchmarks/hub_offline.py); here its data set and model are prepared from the offline cache as `selfd run`
    prepares them before its trials."""
    ran = subprocess.run([SELFD, "data", "prepare", "boolq", "--model", DEBERTA], env=offline, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert f"model {DEBERTA}: {DEBERTA}" in ran.stdout
    assert "task boolq: 38 train / 10 validation / 12 test, labels false, true" in ran.stdout  # 48 train, 0.2 carved
    record = json.loads(next(Path(offline["SELFD_CACHE"], "tasks").glob("boolq-*/split.json")).read_text())
    assert record["split"]["made"]["test"] == "the source's own split"
    assert record["split"]["made"]["validation"] == "carved from train: 0.2 of it, seed 0"
    ran = subprocess.run([SELFD, "validate", str(ROOT / "search_spaces" / "fig3_boolq.yaml")], env=offline,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "valid study 'fig3_boolq': 75 search trials" in ran.stdout, ran.stderr


def test_the_deberta_v3_tokenizer_needs_sentencepiece_and_says_so(offline, tmp_path):
    """Without sentencepiece, transformers falls back to a TikToken reader and fails with a traceback; selfd says
    what to install, in one line, before anything runs. (The package is hidden from this one process, since it
    is installed: the fault cannot be caused otherwise here.)"""
    hide = "import sys; sys.modules['sentencepiece'] = None; from study.cli import main; sys.exit(main(sys.argv[1:]))"
    for command in (["validate", str(ROOT / "search_spaces" / "fig3_rte.yaml")],
                    ["run", str(ROOT / "search_spaces" / "fig3_rte.yaml"), "--study-dir", str(tmp_path / "s")]):
        ran = subprocess.run([sys.executable, "-c", hide, *command], env=offline, capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 2, ran.stderr[-2000:]
        assert ran.stderr.strip() == (
            f"selfd: error: the tokenizer of {DEBERTA} is a SentencePiece model (spm.model, no tokenizer.json), which "
            "transformers reads only with the sentencepiece package: pip install sentencepiece (selfd's install has "
            "it)")
    assert not (tmp_path / "s").exists()


def test_settings_the_model_family_does_not_support_are_refused_before_ray(offline, tmp_path):
    """`selfd run` refuses them in one line before Ray starts (here DeBERTa-v3 with sdpa); the other settings go
    through the same check, called as the driver calls it."""
    ran = subprocess.run([SELFD, "run", str(ROOT / "search_spaces" / "fig3_rte.yaml"), "--study-dir",
                          str(tmp_path / "s"), "--override", "model.attn_implementation=sdpa"], env=offline,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran.stderr[-2000:]
    assert ran.stderr.startswith("selfd: error: model.attn_implementation: deberta-v2 models "
                                 "(DebertaV2ForSequenceClassification) do not support sdpa in transformers")
    assert not (tmp_path / "s").exists()
    script = """
import json
from trainables.config import ModelConfig
from trainables.errors import ConfigError
from trainables.models import check_model_settings, resolve_model
said = []
for name, causal, settings in [
        ("microsoft/deberta-v3-large", False, {"num_layers": 3}),
        ("microsoft/deberta-v3-large", False, {"freeze_layers": 3}),
        ("microsoft/deberta-v3-large", False, {"attn_implementation": "flash_attention_2"}),
        ("meta-llama/Llama-3.2-1B-Instruct", True, {"lora": {"target_modules": ["q_proj", "query"]}}),
        ("meta-llama/Llama-3.2-1B-Instruct", True, {"attn_implementation": "sdpa", "lora": {}})]:
    try:
        check_model_settings(ModelConfig(name=name, **settings), resolve_model(name), causal)
        said.append(None)
    except ConfigError as error:
        said.append(str(error))
print(json.dumps(said))
"""
    ran = subprocess.run([sys.executable, "-c", script], env=offline, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    said = json.loads(ran.stdout)
    assert said[0] == f"model.num_layers is 3 but {DEBERTA} has 2 transformer blocks; keep at most 2"
    assert said[1] == f"model.freeze_layers is 3 but {DEBERTA} has 2 transformer blocks; freeze at most 2"
    assert said[2].startswith("model.attn_implementation: deberta-v2 models (DebertaV2ForSequenceClassification) do "
                              "not support flash_attention_2")
    assert said[3] == ("model.lora.target_modules: llama models have no query layers; their linear layers are "
                       "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj")
    assert said[4] is None  # Llama: sdpa, and LoRA on its default targets


class _Hub(http.server.BaseHTTPRequestHandler):
    """A stand-in for the hub's access check (HF_ENDPOINT): a gated repository answers 403 with the hub's
    X-Error-Code GatedRepo, an unknown one 404 RepoNotFound. A fake, because these answers need the real hub and
    an account; the client code that reads them is huggingface_hub's own."""

    def do_GET(self):  # noqa: N802
        gated = "Llama" in self.path
        self.send_response(403 if gated else 404)
        self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
        self.send_header("X-Error-Message", "Access to this repository is restricted" if gated else "not found")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_gated_or_unknown_hub_model_gets_one_line_with_hf_token_and_the_offline_way(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**offline_environment(tmp_path / "empty-hf", selfd_cache(tmp_path / "selfd-cache")),
           "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
    env.pop("HF_HUB_OFFLINE")  # online, to a hub that refuses
    try:
        for model, says in ((LLAMA, [f"hub model '{LLAMA}' is gated: accept its licence at https://huggingface.co/"
                                     f"{LLAMA} and set HF_TOKEN", "HF_HUB_OFFLINE=1"]),
                            ("no-such-org/no-such-model", ["unknown model 'no-such-org/no-such-model'", "HF_TOKEN"])):
            ran = subprocess.run([SELFD, "run", str(ROOT / "search_spaces" / "nlg_llama.yaml"), "--study-dir",
                                  str(tmp_path / "s"), "--override", f"model.name={model}"], env=env,
                                 capture_output=True, text=True, timeout=120)
            lines = [line for line in ran.stderr.strip().splitlines() if not line.startswith("selfd: downloading")]
            assert ran.returncode == 2 and len(lines) == 1, ran.stderr[-2000:]
            assert all(text in lines[0] for text in says), lines[0]
    finally:
        server.shutdown()
    assert not (tmp_path / "s").exists()


def test_an_uncached_hub_data_set_offline_gets_one_line_with_the_offline_way(tmp_path):
    env = offline_environment(tmp_path / "empty-hf", selfd_cache(tmp_path / "selfd-cache"))
    ran = subprocess.run([SELFD, "run", str(ROOT / "search_spaces" / "fig3_rte.yaml"), "--study-dir",
                          str(tmp_path / "s")], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert ran.stderr.strip().splitlines() == [
        "selfd: error: hub dataset 'aps/super_glue' (config rte) is not in the local cache and HF_HUB_OFFLINE is "
        "set: fill a Hugging Face cache where the hub is reachable (`selfd data prepare` with the task or --model), "
        "copy HF_HOME here and set HF_HUB_OFFLINE=1; or use a packaged task (strategyqa, epistemic_reasoning, "
        "multiemo, fever) or local files with task.files"]
    assert not (tmp_path / "s").exists()


def test_every_shipped_spec_has_model_settings_its_model_family_supports(offline):
    """Each spec of search_spaces/ checked as `selfd run` checks it before Ray: the head selfd adds, the attention
    kernel, num_layers, freeze_layers and LoRA targets, against its model (packaged, or from the offline cache)."""
    script = """
import json, sys
from pathlib import Path
from study.spec import load_spec
from trainables.config import parse_config
from trainables.models import check_model_settings, resolve_model
from trainables.task_kinds import TaskKind, task_kind
checked = []
for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    if "methods:" not in path.read_text():
        continue
    spec = load_spec(path)
    for method in {*spec.methods, *spec.baselines}:
        config = parse_config(spec.base_run(method))
        causal = task_kind(config.task) is TaskKind.GENERATION
        check_model_settings(config.model, resolve_model(config.model.name), causal)
    checked.append(path.name)
print(json.dumps(checked))
"""
    ran = subprocess.run([sys.executable, "-c", script, str(ROOT / "search_spaces")], env=offline, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert set(json.loads(ran.stdout)) >= {"fig3_rte.yaml", "fig3_boolq.yaml", "nlg_llama.yaml", "fig3_rte_cpu.yaml",
                                           "fig3_boolq_cpu.yaml", "nlg_smollm2_cpu.yaml", "dynsdpb_vs_static.yaml"}
