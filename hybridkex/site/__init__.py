"""A site: one end of a hybridkex channel, kept in a directory (docs/sites.md).

The package is split by concern:

* :mod:`~hybridkex.site.credentials` - the private key as PEM, the X.509 certificate
  (:func:`make_certificate`, the library's one certificate minter), pins, and which
  signature scheme a certificate holds;
* :mod:`~hybridkex.site.directory` - the directory itself: :class:`Site`,
  :class:`SiteSettings` (site.toml), :class:`TrustedPeer` (trust/), the file writes;
* :mod:`~hybridkex.site.keysource` - site.toml's ``[key_source]``
  (:class:`KeySourceSettings`: keys.db, or an ETSI GS QKD 014 KME) and
  :class:`PoolLevel`, what the site can say about one peer's pool;
* :mod:`~hybridkex.site.pairing` - :func:`pair`: the trust exchange, then the
  **simulated** QKD link fills both key stores;
* :mod:`~hybridkex.site.layout` and :mod:`~hybridkex.site.errors` - the file names, the
  site-name rule and :class:`SiteError`, shared by the three.

Importing this package loads neither numpy nor any ``hybridkex.qkd`` module: the
simulated link is imported when :func:`pair` runs, so ``hybridkex serve`` and
``hybridkex connect`` start without it.
"""

from __future__ import annotations

from hybridkex.site.credentials import (
    COMPOSITE,
    SIGNATURE_SCHEMES,
    load_pin,
    load_private_key_pem,
    make_certificate,
    pin_text,
    private_key_pem,
)
from hybridkex.site.directory import Site, SiteSettings, TrustedPeer
from hybridkex.site.errors import SiteError
from hybridkex.site.keysource import KeySourceSettings, PoolLevel
from hybridkex.site.layout import check_name
from hybridkex.site.pairing import DEFAULT_PULSES_PER_ROUND, PairingFailed, PairReport, pair

__all__ = [
    "COMPOSITE",
    "DEFAULT_PULSES_PER_ROUND",
    "SIGNATURE_SCHEMES",
    "KeySourceSettings",
    "PairReport",
    "PairingFailed",
    "PoolLevel",
    "Site",
    "SiteError",
    "SiteSettings",
    "TrustedPeer",
    "check_name",
    "load_pin",
    "load_private_key_pem",
    "make_certificate",
    "pair",
    "pin_text",
    "private_key_pem",
]
