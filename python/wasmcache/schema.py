"""Untrusted JSON, read under limits.

Bytes from a bucket are parsed only after their size and their nesting depth were checked
(the depth by a scan of the bytes, before the parser could recurse), and each value is then
checked for its exact type and range before use: a bool is not an int, a float is not a
length, a string has a bounded length and an alphabet. Anything else raises
:class:`Invalid`, which the caller turns into its own error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


class Invalid(Exception):
    """Internal: the value does not fit its schema; the message says where and why."""


def nesting(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings
    do not count); one pass, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise Invalid(f"the key {name!r} appears twice")
        result[name] = value
    return result


def _no_constant(name: str) -> Any:
    raise Invalid(f"{name} is not a JSON number")


def loads(data: bytes, *, max_size: int, max_depth: int) -> Any:
    """The JSON value in ``data``: at most ``max_size`` bytes of UTF-8, nested at most
    ``max_depth`` deep, no key twice, no NaN or Infinity."""
    if len(data) > max_size:
        raise Invalid(f"{len(data)} bytes of JSON, more than {max_size}")
    depth = nesting(data)
    if depth > max_depth:
        raise Invalid(f"JSON nested {depth} deep, more than {max_depth}")
    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique, parse_constant=_no_constant
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Invalid(f"not JSON: {exc}") from None


def fields(
    value: object, what: str, required: Collection[str], optional: Collection[str] = ()
) -> dict[str, Any]:
    """``value`` as an object holding every ``required`` key, and no key but those and
    the ``optional`` ones."""
    if not isinstance(value, dict):
        raise Invalid(f"{what} is a {_type(value)}, not an object")
    missing = [name for name in required if name not in value]
    if missing:
        raise Invalid(f"{what} lacks {', '.join(sorted(missing))}")
    extra = [name for name in value if name not in required and name not in optional]
    if extra:
        shown = ", ".join(repr(name[:40]) for name in sorted(extra)[:5])
        raise Invalid(f"{what} has unknown keys {shown}")
    return value


def integer(value: object, what: str, low: int, high: int) -> int:
    """``value`` as an int (never a bool or a float) within ``low..high``."""
    if type(value) is not int:
        raise Invalid(f"{what} is a {_type(value)}, not an integer")
    if not low <= value <= high:
        raise Invalid(f"{what} is {value}, outside {low}..{high}")
    return value


def text(value: object, what: str, pattern: re.Pattern[str], max_length: int) -> str:
    """``value`` as a string of at most ``max_length`` characters matching ``pattern``."""
    if not isinstance(value, str):
        raise Invalid(f"{what} is a {_type(value)}, not a string")
    if len(value) > max_length or not pattern.fullmatch(value):
        raise Invalid(f"{what} is not {pattern.pattern!r} of at most {max_length} characters")
    return value


def choice(value: object, what: str, options: Collection[str]) -> str:
    """``value`` as one of the strings ``options``."""
    if not isinstance(value, str) or value not in options:
        raise Invalid(f"{what} is {_short(value)}, not one of {', '.join(sorted(options))}")
    return value


def _type(value: object) -> str:
    return {bool: "bool", int: "integer", float: "float", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def _short(value: object) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    return f"a {_type(value)}"
