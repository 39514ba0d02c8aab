"""The names inside a site directory, and the rule for a site's own name.

Kept apart from the code that reads and writes them, so that the credentials (which
name ``identity.key`` in their errors) and the directory share one spelling.
"""

from __future__ import annotations

import os
import re
import stat

from hybridkex.site.errors import SiteError

__all__ = ["IDENTITY_CRT", "IDENTITY_KEY", "IDENTITY_PIN", "KEYS_DB", "KME_CA", "KME_CLIENT_CRT",
           "KME_CLIENT_KEY", "SITE_TOML", "TRUST_DIR", "check_name", "check_private_mode"]

SITE_TOML, IDENTITY_KEY, IDENTITY_CRT, IDENTITY_PIN = (
    "site.toml", "identity.key", "identity.crt", "identity.pin")
TRUST_DIR, KEYS_DB = "trust", "keys.db"
#: The names `hybridkex site kme-source` gives the files of a KME key source: this site's
#: SAE certificate and key at its KME, and the CA that issued the KME's certificate.
KME_CLIENT_CRT, KME_CLIENT_KEY, KME_CA = "kme-client.crt", "kme-client.key", "kme-ca.crt"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_name(name: str) -> str:
    """A site name: 1-63 characters from A-Z a-z 0-9 . _ -, starting with a letter or
    digit (it names files in trust/, key pools and certificates)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SiteError(f"invalid site name {name!r}: use 1 to 63 characters from "
                        "A-Z a-z 0-9 . _ - starting with a letter or a digit")
    return name


def check_private_mode(path: object, mode: int) -> None:
    """Refuse a private key file that group or others may access (``mode`` from stat),
    as ssh does: the key is unencrypted, so its permissions are its protection."""
    if os.name == "posix" and mode & 0o077:
        raise SiteError(f"{path} is accessible by group or others (mode "
                        f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
