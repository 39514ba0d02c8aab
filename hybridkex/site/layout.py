"""The names inside a site directory, and the rule for a site's own name.

Kept apart from the code that reads and writes them, so that the credentials (which
name ``identity.key`` in their errors) and the directory share one spelling.
"""

from __future__ import annotations

import re

from hybridkex.site.errors import SiteError

__all__ = ["IDENTITY_CRT", "IDENTITY_KEY", "IDENTITY_PIN", "KEYS_DB", "SITE_TOML", "TRUST_DIR",
           "check_name"]

SITE_TOML, IDENTITY_KEY, IDENTITY_CRT, IDENTITY_PIN = (
    "site.toml", "identity.key", "identity.crt", "identity.pin")
TRUST_DIR, KEYS_DB = "trust", "keys.db"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_name(name: str) -> str:
    """A site name: 1-63 characters from A-Z a-z 0-9 . _ -, starting with a letter or
    digit (it names files in trust/, key pools and certificates)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SiteError(f"invalid site name {name!r}: use 1 to 63 characters from "
                        "A-Z a-z 0-9 . _ - starting with a letter or a digit")
    return name
