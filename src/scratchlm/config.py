"""Typed configuration from YAML: a misspelled or ill-typed key is an error naming it and its file.

Stage configs with flat keys go through HfArgumentParser (so `--key value` overrides work);
this module handles the nested parts (data sources, model overrides) the same strict way.
"""

import difflib
import re
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import yaml

from .errors import ScratchError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ScratchError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ScratchError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ScratchError(f"{path}: expected a mapping of keys to values")
    return data


def unknown_key_error(key: str, known, where: str) -> ScratchError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ScratchError(f"{where}: unknown key '{key}'{hint}")


def from_mapping(cls, data: dict, where: str):
    """An instance of dataclass `cls` from `data`, checking names, required keys and types."""
    if not isinstance(data, dict):
        raise ScratchError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise unknown_key_error(key, known, where)
    for name, field in known.items():
        if name not in data and field.default is MISSING and field.default_factory is MISSING:
            raise ScratchError(f"{where}: missing required key '{name}'")
    values = {key: convert(value, hints[key], f"{where}: '{key}'") for key, value in data.items()}
    return cls(**values)


def convert(value, hint, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return convert(value, option, where)
            except ScratchError as err:
                errors.append(str(err))
        raise ScratchError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ScratchError(f"{where} must be a list, got {type(value).__name__}")
        return [convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ScratchError(f"{where} must be a mapping, got {type(value).__name__}")
        return value
    if is_dataclass(hint):
        return from_mapping(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string; it is the number the user meant
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise ScratchError(f"{where} must be {hint.__name__}, got {type(value).__name__} ({value!r})")
    return value
