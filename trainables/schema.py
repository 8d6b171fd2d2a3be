"""Reading what users write: strict pydantic models, YAML files, ``--override key.path=value``.

Every check here ends in a ``ConfigError`` whose message is one line naming the file or the field: a YAML file
that is not UTF-8 text, that is not valid YAML, that gives a key twice in one mapping, or whose top level is not
a mapping; an override without ``=``; a value of the wrong type (``one_line`` of pydantic's error).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from trainables.errors import ConfigError


class Strict(BaseModel):
    """Unknown keys are refused and a checked value never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping (empty for an empty file)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; name a YAML file in it")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 YAML") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        raise ConfigError(f"{path}: {error.problem} (line {mark.line + 1})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``a.b=value`` sets ``data['a']['b']``; the value is read as YAML (numbers, booleans, lists)."""
    values = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {override!r} is not of the form key.path=value")
        try:
            values[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: the value is not valid YAML") from None
    return with_values(data, values)


def with_values(data: dict, values: dict) -> dict:
    """A copy of ``data`` with each dotted path in ``values`` set (``{"distill.tau": 3}``).

    Keys that themselves hold dots (a study's ``search.space`` names fields like ``distill.tau``) are matched
    whole where they exist: ``search.space.distill.tau.values`` reaches ``space["distill.tau"]["values"]``.
    """
    data = dict(data)
    for key, value in values.items():
        parts, node = key.split("."), data
        while True:
            take = next((j for j in range(len(parts), 1, -1) if ".".join(parts[:j]) in node), 1)
            name, parts = ".".join(parts[:take]), parts[take:]
            if not parts:
                node[name] = value
                break
            child = node.get(name)
            if isinstance(child, str) and name in ("model", "task"):
                child = {"name": child}  # `task: rte` then `task.max_length=64`
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"{key}: {name} is not a mapping")
            node[name] = dict(child or {})
            node = node[name]
    return data


def flatten(data: dict, prefix: str = "") -> dict:
    """Nested mappings as one level of dotted keys (``{"distill": {"tau": 2}}`` → ``{"distill.tau": 2}``)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def one_line(error: ValidationError) -> str:
    """The first problem pydantic found, as ``field.path: message``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = len(error.errors()) - 1
    return f"{where}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def validated(model: type[BaseModel], data: dict):
    """``model`` checked from ``data``, a ``ConfigError`` with ``one_line`` when it is not valid."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(one_line(error)) from None
