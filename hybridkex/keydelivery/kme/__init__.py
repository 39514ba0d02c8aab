"""A Key Management Entity (KME) implementing ETSI GS QKD 014 V1.1.1 over the key store.

* :mod:`hybridkex.keydelivery.kme.formats` - the spec's data formats and this KME's rules
  (standard library only);
* :mod:`hybridkex.keydelivery.kme.server` - the HTTPS server (needs the ``kme`` extra:
  ``pip install 'hybridkex[kme]'``, which brings aiohttp);
* :mod:`hybridkex.keydelivery.kme.client` - the SAE's blocking client and key source
  (standard library), :mod:`hybridkex.keydelivery.kme.aio_client` the asyncio ones
  (aiohttp), both over :mod:`hybridkex.keydelivery.kme.calls` (the requests and the
  reading of answers, without I/O).

``from hybridkex.keydelivery.kme import KMEServer`` imports the server lazily, so the formats
(used by :mod:`hybridkex.keydelivery.kme.client`) never need aiohttp.  See docs/kme.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridkex.keydelivery.kme.formats import KMELimits

if TYPE_CHECKING:
    from hybridkex.keydelivery.kme.server import (
        BackgroundKME,
        KMEServer,
        load_sae_map,
        server_ssl_context,
    )

__all__ = ["BackgroundKME", "KMELimits", "KMEServer", "load_sae_map", "server_ssl_context"]

_SERVER_NAMES = {"BackgroundKME", "KMEServer", "load_sae_map", "server_ssl_context"}


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from hybridkex.errors import BackendUnavailable

        try:
            from hybridkex.keydelivery.kme import server
        except ImportError as exc:
            if exc.name != "aiohttp" and not (exc.name or "").startswith("aiohttp."):
                raise
            raise BackendUnavailable(
                "the KME server needs aiohttp: pip install 'hybridkex[kme]'") from None
        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
