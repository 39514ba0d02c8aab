"""The sending end of the KME-to-KME sync: HTTPS with mutual TLS to the peer KMEs.

A KME presents its own certificate (CN = its KME ID = its site ID) as the client
certificate, checks the peer's against the shared CA and the host name in the peer's
URL, and then checks that the peer's CN is the site ID it was configured under: a
certificate the CA issued to another KME does not pass for this one.  One kept-alive
aiohttp session per KME serves every peer.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.binding import Reservation
from hybridkex.keydelivery.kme.calls import client_ssl_context
from hybridkex.keydelivery.kme.formats import ServerError
from hybridkex.keydelivery.kme.sync import RESERVATIONS_PATH, encode_reservations

__all__ = ["PeerKMEs", "PeerTLS", "check_peer_url", "common_name", "peer_tls"]

MAX_ANSWER_BYTES = 64 * 1024


def check_peer_url(site: str, url: str) -> str:
    """A peer KME's base URL (``https://HOST:PORT``), checked; trailing ``/`` dropped."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise InvalidParameter(f"the URL of peer KME {site!r} must be https://HOST:PORT")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidParameter(f"the URL of peer KME {site!r} has an invalid port") from None
    return url.rstrip("/")


PeerTLS = Callable[[str], ssl.SSLContext]
"""Makes the client TLS context for the peer KME of a site (see :func:`peer_tls`)."""


def peer_tls(cert: str | Path, key: str | Path, ca: str | Path) -> PeerTLS:
    """The client side of KME-to-KME TLS: this KME's certificate, the shared CA, and
    for each peer a context that accepts only a certificate whose CN is that peer's
    site ID (checked in the handshake, so no request reaches another KME).  Files
    are read now, so a bad one is reported at start-up."""
    def make(site: str) -> ssl.SSLContext:
        ctx = client_ssl_context(cert, key, ca, holder="KME")
        ctx.sslobject_class = _expecting(site)
        return ctx

    make("")  # fail early on unreadable files
    return make


def _expecting(site: str) -> type[ssl.SSLObject]:
    class PeerObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            if common_name(self.getpeercert()) != site:
                raise ssl.SSLCertVerificationError(
                    f"the peer KME's certificate is not issued to KME ID {site!r}")

    return PeerObject


def common_name(peercert: object) -> str | None:
    """The subject's single common name in a verified certificate as :mod:`ssl` reports
    it (``getpeercert()``): a peer KME's site ID, an SAE's ID; None if it has not
    exactly one."""
    if not isinstance(peercert, dict):
        return None
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    return names[0] if len(names) == 1 and isinstance(names[0], str) else None


class PeerKMEs:
    """The peer KMEs this KME (``site_id``) sends reservations to, by site ID."""

    def __init__(self, site_id: str, peers: Mapping[str, str], tls: PeerTLS | None,
                 timeout_s: float = 10.0) -> None:
        self.site_id = site_id
        self.urls = {site: check_peer_url(site, url) for site, url in peers.items()}
        self._tls = tls
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit_per_host=16)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, site: str, reservations: Sequence[Reservation]) -> None:
        """Have ``site``'s KME record ``reservations``; return once it has.  Any failure
        (no such peer, unreachable, a refusal) is ServerError (503): the caller hands
        none of these keys out."""
        url = self.urls.get(site)
        if url is None:
            raise ServerError(f"no peer KME is configured for site {site}")
        if self._session is None or self._tls is None:
            raise ServerError("the KME is not running")
        if site not in self._contexts:
            self._contexts[site] = self._tls(site)
        body = json.dumps(encode_reservations(self.site_id, site, reservations))
        try:
            async with self._session.post(url + RESERVATIONS_PATH, data=body,
                                          ssl=self._contexts[site],
                                          headers={"Content-Type": "application/json"}) as answer:
                text = await answer.content.read(MAX_ANSWER_BYTES)
                if answer.status != 200:
                    raise ServerError(f"the peer KME for site {site} refused the reservation "
                                      f"({answer.status}: {_message(text)})")
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise ServerError(f"the peer KME for site {site} is unreachable "
                              f"({type(exc).__name__})") from None


def _message(raw: bytes) -> str:
    try:
        decoded = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "no JSON body"
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])[:200]
    return "no message"
