"""A study file written from a mapping: what a script that builds studies writes instead of
editing TOML text (``tomllib`` reads; this writes the subset a study file uses).

    raw = tomllib.loads(Path("studies/demo.toml").read_text())
    raw["data"]["cv"] = "walk_forward"
    Path("mine.toml").write_text(dump_study(raw))

Scalars (strings, booleans, integers, floats) and lists of them are ``key = value`` lines; a
table is a ``[section]`` (nested ones as ``[a.b]``); a list of tables is ``[[section]]`` blocks.
``tomllib.loads(dump_study(raw)) == raw`` for every such mapping (a test checks it on every
shipped study file).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string: same escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} {value!r} to a study file")


def _key(name: str) -> str:
    bare = name.replace("_", "").replace("-", "").isalnum() and name.isascii()
    return name if bare else json.dumps(name)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _section(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, Mapping) and not _is_tables(v)]
    for key, value in plain:
        lines.append(f"{_key(key)} = {_value(value, '.'.join([*path, key]))}")
    for key, value in table.items():
        name = [*path, key]
        if isinstance(value, Mapping):
            lines += ["", f"[{'.'.join(_key(n) for n in name)}]"]
            _section(lines, name, value)
        elif _is_tables(value):
            for item in value:
                lines += ["", f"[[{'.'.join(_key(n) for n in name)}]]"]
                _section(lines, name, item)


def dump_study(raw: Mapping[str, Any]) -> str:
    """TOML text of a study mapping (module docstring)."""
    lines: list[str] = []
    _section(lines, [], raw)
    return "\n".join(lines).lstrip("\n") + "\n"
