"""Writing the little TOML a site holds (site.toml and pin files).

The standard library reads TOML (``tomllib``) but does not write it, and the two files
need only scalars, lists and one level of tables.
"""

from __future__ import annotations

import json
import math
import re

__all__ = ["toml_key", "toml_value"]


def toml_value(value: object) -> str:
    """One TOML value, for the few types site.toml holds (no TOML writer in the stdlib)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("site.toml holds finite numbers only")
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to site.toml")


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)
