"""Typed settings from parsed JSON or TOML tables (`vertedge.tables`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vertedge.tables import dataclass_from_table


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = (1, 2)
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    rate: float = 1.0
    folder: Path | None = None
    label: str | None = None
    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = ()


def test_tables_become_typed_nested_dataclasses():
    got = dataclass_from_table(Outer, {"rate": 2, "folder": "~/x", "label": None, "inner": {"size": [3, 4], "names": ["a"]},
                                       "items": [{"size": [5, 6]}]}, "config")
    assert got == Outer(2.0, Path("~/x").expanduser(), None, Inner((3, 4), ("a",)), (Inner((5, 6)),))
    assert isinstance(got.rate, float)


@pytest.mark.parametrize("table, message", [
    ({"rat": 1.0}, "config: unknown setting rat (known: folder, inner, items, label, rate)"),
    ({"rate": "fast"}, "config.rate must be float, got str 'fast'"),
    ({"rate": True}, "config.rate must be float, got bool True"),
    ({"inner": {"size": [1, 2, 3]}}, "config.inner.size must be a list of 2, got 3"),
    ({"inner": {"size": [1, "2"]}}, "config.inner.size[1] must be int, got str '2'"),
    ({"items": [{"sise": [1, 2]}]}, "config.items[0]: unknown setting sise"),
    ({"inner": [1]}, "config.inner: expected a table (an object), got list"),
    ({"folder": ""}, "config.folder must be a path"),
])
def test_a_bad_value_is_refused_naming_its_key(table, message):
    with pytest.raises(ValueError) as e:
        dataclass_from_table(Outer, table, "config")
    assert message in str(e.value)
