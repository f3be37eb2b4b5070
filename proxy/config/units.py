"""Durations and sizes as written in routes.yaml.

Durations: `250ms`, `1.5s`, `5m`, `1h`; sizes: `64KiB`, `1MiB`, `10MB`.

A plain number is seconds (durations) or bytes (sizes). Both raise ValueError with a message that
says what is accepted.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_NUMBER_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")

DURATION_HINT = "a duration such as 250ms, 1s, 1.5s, 5m or 1h (a plain number is seconds)"
SIZE_HINT = "a size such as 64KiB, 1MiB, 1GiB, 10MB or a number of bytes"


def _with_unit(value: str, units: dict, what: str, hint: str) -> float:
    """`value`'s number times its unit's multiplier (no unit: 1); ValueError naming `what`."""
    m = _NUMBER_UNIT.fullmatch(value)
    unit = m.group(2).lower() if m else ""
    if not m or (unit and unit not in units):
        raise ValueError(f"invalid {what} {value!r}: expected {hint}")
    return float(m.group(1)) * (units[unit] if unit else 1)


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `1s`, `1.5s`, `5m`, `1h` or a plain non-negative number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    elif isinstance(value, str):
        seconds = _with_unit(value, _DURATION_UNITS, "duration", DURATION_HINT)
    else:
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_HINT}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `64KiB`, `1MiB`, `1GiB` (binary), `KB/MB/GB` (decimal) or a plain integer."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected {SIZE_HINT}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"invalid size {value!r}: a plain number of bytes must be whole")
        size = int(value)
    elif isinstance(value, str):
        exact = _with_unit(value, _SIZE_UNITS, "size", SIZE_HINT)
        if not math.isfinite(exact) or not exact.is_integer():
            raise ValueError(f"invalid size {value!r}: must be a whole number of bytes")
        size = int(exact)
    else:
        raise ValueError(f"invalid size {value!r}: expected {SIZE_HINT}")
    if size < 0:
        raise ValueError(f"invalid size {value!r}: must not be negative")
    return size


def format_duration(seconds: float) -> str:
    """Shortest readable form, e.g. 0.25 -> '250ms', 90 -> '90s', 300 -> '5m'."""
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    for unit, scale in (("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """Binary units where exact, e.g. 1048576 -> '1MiB'; else bytes."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
