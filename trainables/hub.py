"""Fail fast, with alternatives, when a Hugging Face hub asset cannot be had."""

from __future__ import annotations

from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

from trainables.errors import AssetError, first_line


def require_hub_asset(repo_id: str, *, repo_type: str, alternatives: str) -> None:
    """Raise AssetError at once unless ``repo_id`` is in the local hub cache or the hub can serve it.

    ``alternatives`` finishes the message: what the user can name instead (a packaged alias, local files).
    """
    what = "model" if repo_type == "model" else "dataset"
    if repo_type == "model" and isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise AssetError(f"hub {what} '{repo_id}' is not in the local cache and HF_HUB_OFFLINE is set; {alternatives}")
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10)
    except (RepositoryNotFoundError, HFValidationError):
        raise AssetError(f"unknown {what} '{repo_id}': no such local path or hub repository; {alternatives}") from None
    except GatedRepoError:
        raise AssetError(f"hub {what} '{repo_id}' is gated: accept its terms and set HF_TOKEN; {alternatives}") from None
    except Exception as error:  # DNS failure, refused connection, timeout, proxy …
        raise AssetError(
            f"hub {what} '{repo_id}' is not cached and the hub cannot be reached ({first_line(error, 1000)}); "
            f"{alternatives}"
        ) from None
