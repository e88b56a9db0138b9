"""Checks every request body passes before anything reaches the database.

JSON lets a client send text and numbers that Postgres cannot store or that
mean nothing: a NUL character (``\\u0000``, refused by ``text`` and ``jsonb``),
an unpaired UTF-16 surrogate (``"\\ud800"``, not encodable as UTF-8), and
Python's JSON extensions ``NaN`` / ``Infinity`` (not JSON at all). Integers
are bounded by the column types they land in (``INT32_MAX`` for ``integer``).
:func:`check_json_tree` walks a decoded body and names the first bad value's
field, so the answer is a 422 that says where, never a 500 from the driver.
"""

from __future__ import annotations

import math
from typing import Any

INT32_MAX = 2**31 - 1  # Postgres "integer"
INT64_MAX = 2**63 - 1  # Postgres "bigint"
MAX_JSON_DEPTH = 32  # nesting of user metadata (objects and arrays)


class JsonTextError(ValueError):
    """A value in a request body that cannot be stored; ``field`` names where it is."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field or 'body'}: {problem}")
        self.field = field
        self.problem = problem


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (NUL, unpaired surrogate), else None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000); remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"contains an unpaired UTF-16 surrogate ({text[err.start]!r} at character "
            f"{err.start}); send valid Unicode text"
        )
    return None


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def check_json_tree(value: Any, path: str = "", *, depth: int = 0) -> None:
    """Raise :class:`JsonTextError` for the first unstorable value under ``value``."""
    if depth > MAX_JSON_DEPTH:
        raise JsonTextError(path, f"is nested deeper than {MAX_JSON_DEPTH} levels; flatten it")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise JsonTextError(path, problem)
    elif isinstance(value, bool):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise JsonTextError(path, f"is {value!r}; only finite numbers are allowed")
    elif isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise JsonTextError(path, "is an integer outside the 64-bit range; send it as text")
    elif isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key)
            problem = text_problem(key_text)
            if problem:
                raise JsonTextError(path, f"has a key that {problem}")
            check_json_tree(item, _join(path, key_text), depth=depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_tree(item, _join(path, index), depth=depth + 1)
