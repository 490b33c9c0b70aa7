"""Typed settings from parsed JSON or TOML: a frozen dataclass from a table, checked key by key.

One reader for every settings file vertedge takes (the DICOM node's TOML, the training configs'
JSON): unknown keys and values of the wrong type are errors that name the key, lists become
tuples, nested tables nested dataclasses, strings `Path`s and integers floats where the field says
so. A missing required key is the dataclass's own TypeError.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any


def dataclass_from_table(cls: type, table: Any, where: str) -> Any:
    """An instance of dataclass `cls` from `table` (a dict), recursively; ValueError naming the key
    (`where` is the table's own name in messages: "config.loc", "destinations[0]", "" at the top)."""
    if not isinstance(table, dict):
        raise ValueError(f"{where or 'the file'}: expected a table (an object), got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(f"{where or 'the file'}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)}"
                         f" (known: {', '.join(sorted(names))})")
    prefix = f"{where}." if where else ""
    return cls(**{k: _value(hints[k], v, prefix + k) for k, v in table.items()})


def _value(hint: Any, value: Any, key: str) -> Any:
    """`value` as the type `hint` asks for (str, int, float, bool, Path, tuples, a dataclass), or ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None and type(None) in args:
            return None
        return _value(next(a for a in args if a is not type(None)), value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list")
        each = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(each) != len(value):
            raise ValueError(f"{key} must be a list of {len(each)}, got {len(value)}")
        return tuple(_value(h, v, f"{key}[{i}]") for i, (h, v) in enumerate(zip(each, value)))
    if isinstance(hint, type) and is_dataclass(hint):
        return dataclass_from_table(hint, value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a path (a non-empty string)")
        return Path(value).expanduser()
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ValueError(f"{key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
