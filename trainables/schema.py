"""Reading what users write: strict pydantic models, YAML files, ``--override key.path=value``.

Every check here ends in a ``ConfigError`` whose message is one line naming the file or the field: a YAML file
that is larger than a config can be, that is not UTF-8 text, that is not valid YAML, that gives a key twice in one
mapping, that nests deeper than any config does, or whose top level is not a mapping; an override without ``=``
or with such a value; a value of the wrong type (``one_line`` of pydantic's error).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from trainables.errors import ConfigError

MAX_BYTES = 1 << 20  # the largest config or spec file read (the shipped ones are under 4 KiB)
MAX_DEPTH = 16  # the deepest nesting of mappings and lists read (the schemas nest 5 deep)
MAX_VALUES = 100_000  # values in one file, YAML aliases expanded (an alias "bomb" expands to billions)


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
    if (size := path.stat().st_size) > MAX_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a config file is at most {MAX_BYTES:,} (is it the right file?)")
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
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels; no config field is") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    check_size(data, str(path))
    return data


def check_size(value, where: str) -> None:
    """ConfigError when ``value`` nests mappings and lists deeper than ``MAX_DEPTH`` or holds more than
    ``MAX_VALUES`` values."""
    level, layer, seen = 0, [value], 0
    while layer:
        level, seen = level + 1, seen + len(layer)
        if level > MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels; no config field is")
        if seen > MAX_VALUES:
            raise ConfigError(f"{where}: more than {MAX_VALUES:,} values (YAML aliases expanded); no config is "
                              "that large")
        layer = [child for node in layer if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]


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
        except RecursionError:
            raise ConfigError(f"override {key}: nested deeper than {MAX_DEPTH} levels; no config field is") from None
        check_size(values[key], f"override {key}")
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


# a union's member names in error locations (pydantic puts them there): a field is named without them
UNION_TAG = "|"


def union_tag(name: str) -> str:
    """The tag of a union member of a field (``Tag(union_tag("range"))``), left out of error locations."""
    return f"{UNION_TAG}{name}"


def one_line(error: ValidationError) -> str:
    """The first problem pydantic found, as ``field.path: message``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(UNION_TAG)) or "config"
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
