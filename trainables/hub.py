"""Fail fast, in one line, when a Hugging Face hub asset cannot be had: it names the asset, what to do about a
gated or private repository (``HF_TOKEN``), the offline alternative (a filled cache with ``HF_HUB_OFFLINE=1``) and
what else the user can name.

Cached assets need no network: a model whose ``config.json`` is in the hub cache (``HF_HOME/hub``), a data set
whose prepared config is in the datasets cache (``HF_HOME/datasets``, where ``load_dataset`` leaves it).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

from trainables.errors import AssetError, first_line

OFFLINE = ("or fill a Hugging Face cache where the hub is reachable (`selfd data prepare` with the task or "
           "--model), copy HF_HOME here and set HF_HUB_OFFLINE=1")


def require_hub_asset(repo_id: str, *, repo_type: str, alternatives: str, config: str | None = None) -> None:
    """Raise AssetError at once unless ``repo_id`` (a data set's ``config`` of it) is in the local cache or the hub
    serves it to this client.

    ``alternatives`` finishes the message: what the user can name instead (a packaged alias, local files).
    """
    what = "model" if repo_type == "model" else "dataset"
    asset = f"hub {what} '{repo_id}'" + (f" (config {config})" if config else "")
    if cached(repo_id, repo_type, config):
        return
    if constants.HF_HUB_OFFLINE:
        raise AssetError(f"{asset} is not in the local cache and HF_HUB_OFFLINE is set: {OFFLINE.removeprefix('or ')}"
                         f"; or {alternatives}")
    try:
        HfApi().auth_check(repo_id, repo_type=repo_type)
    except GatedRepoError:
        raise AssetError(f"{asset} is gated: accept its licence at https://huggingface.co/"
                         f"{'datasets/' * (what == 'dataset')}{repo_id} and set HF_TOKEN to a token of that account; "
                         f"{OFFLINE}; or {alternatives}") from None
    except (RepositoryNotFoundError, HFValidationError):
        raise AssetError(f"unknown {what} '{repo_id}': no such local path or hub repository (a private one needs "
                         f"HF_TOKEN); {alternatives}") from None
    except Exception as error:  # DNS failure, refused connection, timeout, proxy …
        raise AssetError(f"{asset} is not cached and the hub cannot be reached ({first_line(error, 300)}); "
                         f"{OFFLINE}; or {alternatives}") from None


def cached(repo_id: str, repo_type: str, config: str | None = None) -> bool:
    """Whether ``repo_id`` loads without the hub: a model's config in the hub cache, a data set's config (any, when
    ``config`` is None) prepared in the datasets cache."""
    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    from datasets import config as datasets_config
    from datasets.naming import camelcase_to_snakecase

    *namespace, name = repo_id.split("/")
    folder = Path(datasets_config.HF_DATASETS_CACHE) / "___".join([*namespace, camelcase_to_snakecase(name)])
    return any(folder.glob(f"{config or '*'}/*/*/dataset_info.json"))
