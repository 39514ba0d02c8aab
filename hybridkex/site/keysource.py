"""Where a site's QKD keys come from: site.toml's ``[key_source]`` table.

::

    [key_source]
    kind = "kme"                      # "store" (default: keys.db) | "kme"
    url = "https://127.0.0.1:8443"
    sae_id = "sae-a"                  # this site's SAE ID at its KME
    cert = "kme-client.crt"           # paths relative to the site directory
    key = "kme-client.key"
    ca = "kme-ca.crt"
    [key_source.peers]
    site-b = "sae-b"                  # peer site name -> its SAE ID

Without the table (or with ``kind = "store"``) the site draws its keys from its own
keys.db.  With ``kind = "kme"`` it is an SAE of an ETSI GS QKD 014 KME: sessions take
keys as master SAE ``sae_id`` (Get key for the peer's SAE) and fetch them as slave
(Get key with key IDs from the peer's SAE), over mutual TLS with ``cert`` and ``key``,
checking the KME against ``ca`` (docs/kme.md, docs/sites.md).

:class:`KeySourceSettings` is the table, checked as it is read and written back as it
was read; :func:`open_kme_source` checks its files and makes the key source;
:class:`PoolLevel` is what a site can say about one peer's pool, from keys.db or from
the KME's Get status, with ``None`` for what it could not measure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridkex.errors import HybridKexError, InvalidParameter
from hybridkex.keydelivery.kme.calls import Endpoint
from hybridkex.site._toml import toml_key, toml_value
from hybridkex.site.errors import SiteError
from hybridkex.site.layout import check_name, check_private_mode

if TYPE_CHECKING:
    from hybridkex.keydelivery.kme.dual import DualKMEKeySource

__all__ = ["KME", "KME_FILES", "KME_SETTINGS", "STORE", "KeySourceSettings", "PoolLevel",
           "open_kme_source"]

STORE, KME = "store", "kme"
#: The settings of a ``kind = "kme"`` table, all required, in the order they are written.
KME_SETTINGS = ("url", "sae_id", "cert", "key", "ca")
#: The ones that name files (relative to the site directory).
KME_FILES = ("cert", "key", "ca")
_TABLE = "[key_source]"
_PEERS = "[key_source.peers]"


@dataclass(frozen=True)
class KeySourceSettings:
    """site.toml's ``[key_source]``: ``kind`` "store" (keys.db) or "kme" with the
    KME's ``url``, this site's ``sae_id``, its SAE certificate and key and the KME's CA
    (``cert``, ``key``, ``ca``: as written, relative to the site directory), and
    ``peers``: peer site name -> that site's SAE ID."""

    kind: str = STORE
    url: str = ""
    sae_id: str = ""
    cert: str = ""
    key: str = ""
    ca: str = ""
    peers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_kme(self) -> bool:
        return self.kind == KME

    @classmethod
    def from_table(cls, table: object, where: str) -> KeySourceSettings:
        """The table as tomllib read it, checked; every problem a one-line SiteError."""
        if not isinstance(table, dict):
            raise SiteError(f"{where}: {_TABLE} must be a table")
        known = ("kind", *KME_SETTINGS, "peers")
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise SiteError(f"{where}: {_TABLE} has unknown setting(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(known[:-1])} and {_PEERS}")
        kind = table.get("kind", STORE)
        if kind not in (STORE, KME):
            raise SiteError(f"{where}: {_TABLE} kind must be \"store\" (keys.db) or \"kme\", "
                            f"not {kind!r}")
        if kind == STORE:
            extra = [name for name in known[1:] if name in table]
            if extra:
                raise SiteError(f"{where}: {_TABLE} kind = \"store\" draws keys from keys.db "
                                f"and takes no other setting; remove {', '.join(extra)}, or "
                                "set kind = \"kme\"")
            return cls()
        missing = [name for name in KME_SETTINGS if name not in table]
        if missing:
            raise SiteError(f"{where}: {_TABLE} kind = \"kme\" needs url, sae_id, cert, key "
                            f"and ca; missing: {', '.join(missing)}")
        values: dict[str, str] = {}
        for name in KME_SETTINGS:
            value = table[name]
            if not isinstance(value, str) or not value.strip():
                raise SiteError(f"{where}: {_TABLE} {name} must be a non-empty string")
            values[name] = value
        try:
            Endpoint.parse(values["url"])
        except InvalidParameter as exc:
            raise SiteError(f"{where}: {_TABLE} url {values['url']!r}: {exc}") from None
        _check_sae_id(values["sae_id"], f"{where}: {_TABLE} sae_id")
        peers = table.get("peers", {})
        if not isinstance(peers, dict):
            raise SiteError(f"{where}: {_PEERS} must be a table of peer site name = "
                            "\"its SAE ID\" (strings)")
        for peer, sae in peers.items():
            if not isinstance(sae, str):
                raise SiteError(f"{where}: {_PEERS} {peer} must be a string (the peer's SAE "
                                f"ID), not {type(sae).__name__}")
            try:
                check_name(peer)
            except SiteError as exc:
                raise SiteError(f"{where}: {_PEERS}: {exc}") from None
            _check_sae_id(sae, f"{where}: {_PEERS} {peer}")
            if sae == values["sae_id"]:
                raise SiteError(f"{where}: {_PEERS} {peer} is this site's own SAE ID "
                                f"{sae!r}; a peer's SAE ID is the one it has at its KME")
        return cls(KME, peers=dict(peers), **values)

    def to_toml(self) -> list[str]:
        """The table's lines as it was read (empty for the default, no table)."""
        lines = [_TABLE, f"kind = {toml_value(self.kind)}    # store (keys.db) | kme"]
        if not self.is_kme:
            return lines
        lines += [f"{name} = {toml_value(getattr(self, name))}" for name in KME_SETTINGS]
        lines += ["", _PEERS]
        lines += [f"{toml_key(peer)} = {toml_value(sae)}" for peer, sae in self.peers.items()]
        return lines

    def describe(self) -> dict[str, Any]:
        """What ``site show --json`` reports: kind, and for a KME url, sae_id, peers."""
        if not self.is_kme:
            return {"kind": STORE}
        return {"kind": KME, "url": self.url, "sae_id": self.sae_id, "peers": dict(self.peers)}

    def sae_of(self, peer: str) -> str:
        """The peer's SAE ID, or a one-line SiteError saying how to add it."""
        try:
            return self.peers[peer]
        except KeyError:
            listed = ", ".join(self.peers) or "none"
            raise SiteError(f"site.toml's {_PEERS} names no SAE ID for {peer!r} (it names: "
                            f"{listed}); add {toml_key(peer)} = \"<its SAE ID at its KME>\"") \
                from None

    def path(self, directory: Path, name: str) -> Path:
        """The file ``cert``, ``key`` or ``ca`` names, relative to the site directory."""
        return directory / str(getattr(self, name))


def _check_sae_id(sae: str, what: str) -> None:
    # An SAE ID is a path segment of the ETSI API and a certificate's CN.
    if not sae.strip() or sae in (".", "..") or any(ord(c) < 32 or ord(c) == 127
                                                      for c in sae):
        raise SiteError(f"{what} must be a non-empty SAE ID without control characters, "
                        f"other than '.' and '..'")


def open_kme_source(directory: Path, settings: KeySourceSettings, timeout: float = 10.0, *,
                    private_key_checked: bool = True) -> DualKMEKeySource:
    """The key source of a ``kind = "kme"`` table: the files checked (present, the key
    0600 like identity.key, the certificate and key loadable), no connection made yet.
    (``private_key_checked=False`` skips the mode check, for a key about to be copied
    in as 0600.)"""
    from hybridkex.keydelivery.kme.dual import DualKMEKeySource  # http.client: only here

    paths = {name: settings.path(directory, name) for name in KME_FILES}
    for name, path in paths.items():
        if not path.is_file():
            raise SiteError(f"{_TABLE} {name}: {path} does not exist (or is not a file)")
    if private_key_checked:
        try:
            check_private_mode(paths["key"], os.stat(paths["key"]).st_mode)
        except OSError as exc:
            raise SiteError(f"{_TABLE} key: cannot read {paths['key']}: "
                            f"{exc.strerror or exc}") from None
    try:
        return DualKMEKeySource(settings.url, paths["cert"], paths["key"], paths["ca"],
                                settings.peers, timeout=timeout)
    except HybridKexError as exc:
        raise SiteError(f"{_TABLE}: {exc}") from None


@dataclass(frozen=True)
class PoolLevel:
    """What a site sees of its QKD keys with one peer; ``None`` where it could not
    measure (never 0 in its place).

    From keys.db: ``to_take`` (keys this site may take to initiate), ``to_fetch`` (keys
    the peer may take, which this site then fetches) and ``delivered``.  From a KME:
    ``to_take`` is Get status's ``stored_key_count`` for (this SAE, the peer's SAE
    ``sae_id``); the status says nothing of the other two.  ``reason`` says why
    ``to_take`` is None (the KME unreachable, or refusing).
    """

    peer: str
    to_take: int | None
    to_fetch: int | None = None
    delivered: int | None = None
    sae_id: str | None = None
    reason: str | None = None

    def below(self, warn_below: int) -> bool | None:
        """Whether fewer than ``warn_below`` keys are left to take (None: not measured)."""
        return None if self.to_take is None else self.to_take < warn_below
