"""Checks every config section runs on its values: one line naming ``section.key=value``
and what was expected, so a bad setting is never silently used.
"""

from __future__ import annotations

from typing import Any


def require(section: str, obj: Any, rules: dict[str, tuple[Any, str]]) -> None:
    """Raise ValueError "section.key=value: expected ..." for the first rule that fails; a rule
    is key -> (predicate of the value, what is expected)."""
    for key, (ok, expected) in rules.items():
        value = getattr(obj, key)
        if not ok(value):
            raise ValueError(f"{section}.{key}={value!r}: expected {expected}")


POSITIVE = (lambda v: v >= 1, ">= 1")


NON_NEGATIVE = (lambda v: v >= 0, ">= 0 (0 turns it off)")
