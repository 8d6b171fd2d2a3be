"""The errors selfd turns into exit codes, and how an error is shown in one line.

- ``ConfigError``: bad input from the user (spec, config, overrides, paths, addresses): one line, exit code 2.
- ``AssetError``: a model or data set cannot be had (unknown, offline, a failed registry download): the same.
- ``TrainingDiverged``: the loss became NaN or infinite: exit code 1, or a failed trial in a study.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


class AssetError(RuntimeError):
    """A model or data set cannot be had (unknown, offline, or a registry download failed)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its type's name when it has none), at most ``limit`` characters."""
    text = str(error)
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
