"""A Hugging Face cache for the paper-scale specs, built without network: what a user with a pre-filled cache or an
air-gapped cluster has, in the layouts that ``huggingface_hub`` and ``datasets`` read with ``HF_HUB_OFFLINE=1``.

- ``HF_HOME/hub/models--<org>--<name>/{refs/main, snapshots/<revision>/…}``: randomly initialised models under
  the real repo ids, in the real tokenizer formats:
  - ``microsoft/deberta-v3-large``: a DeBERTa-v2 model with a SentencePiece ``spm.model`` (trained here, unigram)
    and no ``tokenizer.json``, as the hub repository ships it;
  - ``meta-llama/Llama-3.2-1B-Instruct``: a Llama model with a byte-level BPE ``tokenizer.json`` (trained here)
    and Llama 3's special tokens.
  The models are tiny (hidden size 32, 2 blocks: tests and CPU runs); ``gpu_check.py`` builds the paper's
  shapes around the same tokenizers.
- ``HF_HOME/datasets/<org>___<name>/<config>/0.0.0/<hash>/``: small data sets under the real ids, configs,
  columns, label names and splits (``aps/super_glue`` rte and boolq, ``nyu-mll/glue`` sst2), as
  ``load_dataset`` leaves them; their test splits hide the labels (-1), as the real ones do.

The text is synthetic with a rule a model can learn (RTE: the hypothesis repeats the premise's subject or not;
BoolQ: the passage says yes or no; SST-2: good or bad words). Nothing is downloaded; no weights or data are
committed: everything is built where it is used.

    python benchmarks/offline_hub.py HF_HOME [--examples 200]   # then HF_HOME=... HF_HUB_OFFLINE=1 selfd run ...
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
from pathlib import Path

REVISION = "5e1ec7ed0ff1ceba5e1ec7ed0ff1ceba5e1ec7ed"  # any 40 hex digits: the snapshot refs/main points to
DEBERTA = "microsoft/deberta-v3-large"
LLAMA = "meta-llama/Llama-3.2-1B-Instruct"
MODELS = (DEBERTA, LLAMA)
# (repo, config) → (text column, text-pair column, label names), as on the hub
DATASETS = {
    ("aps/super_glue", "rte"): ("premise", "hypothesis", ["entailment", "not_entailment"]),
    ("aps/super_glue", "boolq"): ("question", "passage", ["False", "True"]),
    ("nyu-mll/glue", "sst2"): ("sentence", None, ["negative", "positive"]),
}
SUBJECTS = ["the cat", "a farmer", "the river", "my neighbour", "the old bridge", "a student", "the orchestra",
            "the city council", "a small boat", "the museum"]
VERBS = ["crossed", "painted", "visited", "repaired", "watched", "described", "followed", "opened"]
OBJECTS = ["the valley", "a wooden fence", "the harbour", "an empty room", "the northern road", "a red door"]
GOOD, BAD = ["wonderful", "moving", "bright", "clever", "warm"], ["dull", "clumsy", "tedious", "cold", "weak"]

TINY_DEBERTA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512, position_buckets=32)
TINY_LLAMA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, max_position_embeddings=1024)


def corpus() -> list[str]:
    """Sentences in the data sets' words, and every printable ASCII character, for the tokenizers to learn."""
    rows = [f"{s} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS]
    rows += [f"is {s} {g}? the film was {g} and {b}." for s in SUBJECTS for g, b in zip(GOOD, BAD)]
    return rows + ["".join(chr(c) for c in range(32, 127))] * 3


def sentencepiece_tokenizer(folder: Path) -> int:
    """DeBERTa-v3's tokenizer files: ``spm.model`` (a unigram SentencePiece model with [PAD], [CLS], [SEP],
    [UNK] at ids 0–3, as DeBERTa-v3's has) and ``tokenizer_config.json``; returns the vocabulary size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=250, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    (folder / "spm.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    return pieces + 1  # [MASK] is added after the pieces


def byte_level_tokenizer(folder: Path) -> int:
    """Llama 3's tokenizer format: a byte-level BPE ``tokenizer.json`` with its special tokens; returns the
    vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=special[0], eos_token=special[2])
    fast.save_pretrained(folder)
    return tokenizer.get_vocab_size()


def model_snapshot(home: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in the hub cache under ``home``, with refs/main pointing at it."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def build_model(folder: Path, repo: str) -> Path:
    """``repo``'s tokenizer and a tiny randomly initialised model (config and safetensors) in ``folder``, as the hub
    repository lays them out."""
    import torch
    from transformers import DebertaV2Config, DebertaV2Model, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if repo == DEBERTA:
        config = DebertaV2Config(vocab_size=sentencepiece_tokenizer(folder), **TINY_DEBERTA, relative_attention=True,
                                 norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                                 position_biased_input=False, type_vocab_size=0, max_relative_positions=-1,
                                 pad_token_id=0)
        model = DebertaV2Model(config)  # the hub repository holds the encoder; selfd adds the head
    elif repo == LLAMA:
        config = LlamaConfig(vocab_size=byte_level_tokenizer(folder), **TINY_LLAMA, bos_token_id=0, eos_token_id=2)
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"no offline build for {repo}; one of {', '.join(MODELS)}")
    model.save_pretrained(folder)
    return folder


def build_dataset(home: Path, repo: str, config: str, examples: int, seed: int = 0) -> Path:
    """A small ``repo``/``config`` with its train, validation and test splits in the datasets cache under
    ``home`` (the layout ``load_dataset`` leaves after a download)."""
    import datasets
    import pandas as pd
    from datasets.packaged_modules.parquet.parquet import Parquet

    datasets.disable_progress_bars()
    text, pair, labels = DATASETS[(repo, config)]
    generator = random.Random(f"{repo}/{config}/{seed}")
    scratch = home / "scratch" / f"{repo.replace('/', '--')}-{config}"
    scratch.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, size in (("train", examples), ("validation", max(8, examples // 4)), ("test", max(8, examples // 4))):
        rows = []
        for index in range(size):
            label = index % 2
            subject, verb, thing = (generator.choice(words) for words in (SUBJECTS, VERBS, OBJECTS))
            if config == "rte":  # entailment (0) when the hypothesis keeps the premise's subject
                other = generator.choice([s for s in SUBJECTS if s != subject])
                row = {text: f"{subject} {verb} {thing}.", pair: f"{subject if label == 0 else other} {verb} {thing}."}
            elif config == "boolq":  # True (1) when the passage says the subject did it
                said = "did" if label else "never"
                row = {text: f"did {subject} see {thing}", pair: f"{subject} {said} {verb} {thing}."}
            else:  # sst2: positive (1) with good words
                word = generator.choice(GOOD if label else BAD)
                row = {text: f"{subject} was {word} and {word}"}
            rows.append({**row, "idx": index, "label": label if split != "test" else -1})  # test labels hidden
        files[split] = str(scratch / f"{split}.parquet")
        pd.DataFrame(rows).to_parquet(files[split])
    features = datasets.Features({**{column: datasets.Value("string") for column in (text, pair) if column},
                                  "idx": datasets.Value("int32"), "label": datasets.ClassLabel(names=labels)})
    cache = home / "datasets"
    namespace, name = repo.split("/")
    builder = Parquet(cache_dir=str(cache), dataset_name=name, config_name=config, data_files=files, features=features,
                      hash=REVISION[:16])
    builder.download_and_prepare()
    # the builder names its folder by its data files; a download names it by the repository and config
    built, target = Path(builder.cache_dir).parents[1], cache / f"{namespace}___{name}" / config
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built, target)
    shutil.rmtree(scratch)
    return target


def build_cache(home: Path, examples: int = 64) -> dict[str, str]:
    """Every model and data set above under ``home`` (an ``HF_HOME``); returns what is where."""
    home = Path(home)
    built = {repo: str(build_model(model_snapshot(home, repo), repo)) for repo in MODELS}
    for repo, config in DATASETS:
        built[f"{repo}:{config}"] = str(build_dataset(home, repo, config, examples))
    return built


def selfd_cache(folder: Path) -> Path:
    """A selfd cache at ``folder`` for runs on this hub cache: hub tasks are cached by name (rte, boolq), so their
    prepared splits must not mix with a real download's; the packaged downloads are shared with the user's cache."""
    shared = Path(os.environ.get("SELFD_CACHE", Path.home() / ".cache" / "selfd")).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("registry", "bigbench", "models"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        if not (folder / name).exists():
            (folder / name).symlink_to(shared / name)
    return folder


def offline_environment(home: Path, cache: Path) -> dict[str, str]:
    """This process's environment with ``home`` as HF_HOME, the hub offline, ``cache`` as SELFD_CACHE, and no
    MLflow, Ray or Hugging Face settings of the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "HF_"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "SELFD_CACHE": str(cache),
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path, help="the HF_HOME to fill")
    parser.add_argument("--examples", type=int, default=64, help="training examples per data set")
    args = parser.parse_args()
    print(json.dumps(build_cache(args.home, args.examples), indent=2))


if __name__ == "__main__":
    main()
