"""Small helpers shared across the package: name look-ups with close matches, argument checks."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Iterable, List


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> ValueError:
    """A ValueError for an unknown ``name`` of ``kind`` that lists close matches."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:20])}"
    return ValueError(f"unknown {kind} {name!r}{hint}")


def match(names: Iterable[str], pattern: str = "*") -> List[str]:
    """Sorted names matching a shell-style ``pattern``."""
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a positive (or non-negative) int."""
    ok = isinstance(value, int) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        want = "an int >= 0" if allow_zero else "an int > 0"
        raise ValueError(f"{name} must be {want}, got {value!r}")


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise a ValueError unless ``divisor`` divides ``value``."""
    if value % divisor:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")
