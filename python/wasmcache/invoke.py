"""``--invoke`` values as wasmtime's CLI reads and prints them.

Arguments: integers are decimal with an optional sign (leading zeros allowed, nothing else:
no ``_``, no ``0b``) or ``0x`` hex, and must fit the parameter's type; floats are decimal
(``1.5``, ``.5``, ``1e-3``), ``inf``/``infinity``/``nan`` in any case, rounded once to the
parameter's precision. Results: integers signed, floats in their shortest form that reads
back to the same value, written out without an exponent (``100``, ``0.33333334``, ``-0``,
``NaN``, ``inf``).
"""

from __future__ import annotations

import math
import re
import struct
from typing import TYPE_CHECKING, Optional

import wasmtime

if TYPE_CHECKING:
    from fractions import Fraction


class InvokeError(ValueError):
    """An argument that is not a value of its parameter's type."""


_INT = re.compile(r"[+-]?[0-9]+")
_HEX = re.compile(r"0[xX]([+-]?[0-9a-fA-F]+)")
_FLOAT = re.compile(r"([+-]?)(?:([0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?)")
_SPECIAL = re.compile(r"([+-]?)(inf|infinity|nan)", re.IGNORECASE)
_BITS = {"i32": 32, "i64": 64}
# (mantissa bits, minimum normal exponent, maximum exponent) of binary32 and binary64.
_FORMATS = {"f32": (24, -126, 127), "f64": (53, -1022, 1023)}


def parse_int(text: str, kind: str) -> int:
    """An i32 or i64 argument, range-checked (wasmtime passes it as a signed value)."""
    bits = _BITS[kind]
    hexa = _HEX.fullmatch(text)
    if hexa:
        value = int(hexa.group(1), 16)
    elif _INT.fullmatch(text):
        value = int(text, 10)
    else:
        raise InvokeError(f"invalid digit found in string: {text!r} is not an {kind}")
    if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        raise InvokeError(f"number too large to fit in target type: {text!r} is not an {kind}")
    return value


def _round_binary(value: Fraction, kind: str) -> float:
    """``value`` rounded to nearest (ties to even) in binary32 or binary64, as a float."""
    from fractions import Fraction

    mantissa_bits, min_exp, max_exp = _FORMATS[kind]
    if value == 0:
        return 0.0
    negative = value < 0
    magnitude = -value if negative else value
    # exponent e with 2**e <= magnitude < 2**(e+1)
    e = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** e > magnitude:
        e -= 1
    e = max(e, min_exp)  # subnormals share the smallest exponent
    quantum = Fraction(2) ** (e - mantissa_bits + 1)
    scaled = magnitude / quantum
    units = scaled.numerator // scaled.denominator
    rest = scaled - units
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and units % 2 == 1):
        units += 1
    rounded = units * quantum
    # float(rounded) is exact: it has at most mantissa_bits significant bits
    result = math.inf if rounded >= Fraction(2) ** (max_exp + 1) else float(rounded)
    return -result if negative else result


def parse_float(text: str, kind: str) -> float:
    """An f32 or f64 argument, rounded once to its precision (a value past the largest
    finite one is infinity, as wasmtime reads it)."""
    from decimal import Decimal
    from fractions import Fraction

    special = _SPECIAL.fullmatch(text)
    if special:
        value = math.nan if special.group(2).lower() == "nan" else math.inf
        return -value if special.group(1) == "-" else value
    match = _FLOAT.fullmatch(text)
    if not match:
        raise InvokeError(f"invalid float literal: {text!r} is not an {kind}")
    sign, digits, exponent = match.groups()
    exp = int(exponent or 0)
    significant = digits.replace(".", "").lstrip("0")
    if not significant:
        result = 0.0
    elif exp + len(digits) > 400:  # beyond any finite value
        result = math.inf
    elif exp < -(400 + len(digits)):  # below half the smallest subnormal
        result = 0.0
    else:
        result = _round_binary(Fraction(Decimal(f"{digits}e{exp}")), kind)
    return -result if sign == "-" else result


def parse(text: str, kind: wasmtime.ValType) -> object:
    """The Python value wasmtime-py passes for an argument ``text`` of type ``kind``."""
    name = str(kind)
    if name in _BITS:
        return parse_int(text, name)
    if name in _FORMATS:
        value = parse_float(text, name)
        return wasmtime.Val.f32(value) if name == "f32" else value
    raise InvokeError(f"unsupported argument type {name}")


def _f32(value: float) -> float:
    """``value`` rounded to binary32 (past the largest finite one: infinity)."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def _shortest_f32(value: float) -> str:
    """The shortest decimal digits that read back (rounded to binary32) as ``value``,
    the closest such if there are several, in Python's repr notation."""
    from decimal import Decimal

    for precision in range(1, 10):
        nearest = Decimal(f"{value:.{precision - 1}e}")
        unit = Decimal(1).scaleb(nearest.adjusted() - precision + 1)
        fits = [
            candidate
            for candidate in (nearest, nearest - unit, nearest + unit)
            if _f32(float(candidate)) == value
        ]
        if fits:
            exact = Decimal(value)
            return str(min(fits, key=lambda c: abs(c - exact)))
    return repr(value)  # pragma: no cover (9 digits always suffice)


def _positional(digits: str) -> str:
    """A number written without an exponent, as Rust writes floats."""
    from decimal import Decimal

    text = format(Decimal(digits), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_float(value: float, kind: str) -> str:
    """A float result as wasmtime prints it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits = _shortest_f32(value) if kind == "f32" else repr(value)
    return _positional(digits)


def format_result(value: object, kind: wasmtime.ValType) -> str:
    """A result as wasmtime prints it (refs as ``<funcref>`` or ``<null funcref>``)."""
    name = str(kind)
    if isinstance(value, wasmtime.Val):
        value = value.value
    if name in _FORMATS and isinstance(value, (int, float)):
        return format_float(float(value), name)
    if name in ("i32", "i64") and isinstance(value, int):
        return str(value)
    if name == "v128" and isinstance(value, int):
        return str(value % (1 << 128))
    # wasmtime-py names externref "anyref" in some releases.
    refs = {"funcref": "funcref", "externref": "externref", "anyref": "externref"}
    ref: Optional[str] = refs.get(name)
    if ref is not None:
        return f"<null {ref}>" if value is None else f"<{ref}>"
    return str(value)
