"""One site's settings for HKX/1 connections: who it is, whom it trusts, what it demands."""

from __future__ import annotations

import datetime
import enum
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from hybridkex.errors import InvalidParameter, UnknownAlgorithm
from hybridkex.keydelivery.source import KeySource
from hybridkex.protocol.identity import SigningIdentity, TrustStore
from hybridkex.protocol.randomness import Randomness, SystemRandomness
from hybridkex.protocol.record import AEAD_RECORD_LIMITS
from hybridkex.protocol.suites import DEFAULT_SUITES, SUITES, SignatureSchemeId, Suite

__all__ = ["AUTH_MODES", "Config", "ReplayCache", "SecurityPolicy"]

AUTH_MODES = ("auto", "signature", "psk")


class SecurityPolicy(enum.Enum):
    """Which of the two quantum-safe secrets a session must have (X25519 is always there).

    The four modes of Arnika: both (the default with a key source), at least the QKD
    key, at least a post-quantum KEM (the default without a key source), either one.
    None of them allows a session with neither, which would rest on X25519 alone.

    ``ALLOW_CLASSICAL`` ("allow-classical") is the one exception, for demonstrations
    and baselines only (``hybridkex rndl-demo`` records such a session to show it
    falling): it accepts an X25519-only session, whose recorded traffic a future
    quantum computer decrypts.  It is never a default, and a session it lets through
    says so in ``session_info().fallback``.
    """

    QKD_AND_PQ = "qkd-and-pq"
    AT_LEAST_QKD = "at-least-qkd"
    AT_LEAST_PQ = "at-least-pq"
    EITHER = "either"
    ALLOW_CLASSICAL = "allow-classical"

    @property
    def requires_qkd(self) -> bool:
        return self in (SecurityPolicy.QKD_AND_PQ, SecurityPolicy.AT_LEAST_QKD)

    @property
    def requires_pq(self) -> bool:
        return self in (SecurityPolicy.QKD_AND_PQ, SecurityPolicy.AT_LEAST_PQ)

    def allows(self, qkd: bool, post_quantum: bool) -> bool:
        if self.requires_qkd and not qkd:
            return False
        if self.requires_pq and not post_quantum:
            return False
        return qkd or post_quantum or self is SecurityPolicy.ALLOW_CLASSICAL


class ReplayCache:
    """ClientHello randoms a server has seen, shared by all its connections.

    Bounded (oldest forgotten first).  A replay that outlives the cache still fails
    where it matters: its QKD and authentication keys were delivered the first time.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        if capacity < 1:
            raise InvalidParameter("replay cache capacity must be positive")
        self._capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, random: bytes) -> bool:
        """Record ``random``; False if it was already there."""
        with self._lock:
            if random in self._seen:
                return False
            self._seen[random] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True

    def __repr__(self) -> str:
        return f"<ReplayCache {len(self._seen)}/{self._capacity}>"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


ALL_SCHEMES = tuple(s.algorithm for s in SignatureSchemeId)


@dataclass(frozen=True)
class Config:
    """Settings shared by every connection of a site (a TLS context's counterpart).

    ``site``: this site's name, as its peers know it (pinned keys, certificate names,
    key-store pools).  ``key_source``: where QKD keys come from; with one, the policy
    defaults to requiring QKD.  ``identity`` and ``trust``: signature-mode
    authentication.  ``auth``: "auto" (psk when the pool can pay for it, else
    signature), "signature" or "psk".  ``clock`` is the only time source, used to
    check certificate validity.  ``secret_log``, if set, receives every secret the
    schedule derives, by name: for test vectors and debugging only, never in production.
    """

    site: str
    key_source: KeySource | None = None
    identity: SigningIdentity | None = None
    trust: TrustStore = field(default_factory=TrustStore)
    security: SecurityPolicy | str | None = None
    suites: tuple[Suite, ...] = DEFAULT_SUITES
    auth: str = "auto"
    mutual_auth: bool = True
    signature_schemes: tuple[str, ...] = ALL_SCHEMES
    qkd_keys_per_handshake: int = 1
    replay_cache: ReplayCache = field(default_factory=ReplayCache)
    randomness: Randomness = field(default_factory=SystemRandomness)
    clock: Callable[[], datetime.datetime] = _utc_now
    key_update_interval: int | None = None
    secret_log: Callable[[str, bytes], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not 0 < len(self.site.encode("utf-8")) < 256:
            raise InvalidParameter("site must be a name of 1 to 255 UTF-8 bytes")
        policy = self.security
        if policy is None:
            policy = (SecurityPolicy.QKD_AND_PQ if self.key_source is not None
                      else SecurityPolicy.AT_LEAST_PQ)
        elif not isinstance(policy, SecurityPolicy):
            try:
                policy = SecurityPolicy(policy)
            except ValueError:
                raise InvalidParameter(
                    f"security must be one of {[p.value for p in SecurityPolicy]}") from None
        object.__setattr__(self, "security", policy)
        if policy.requires_qkd and self.key_source is None:
            raise InvalidParameter(f"security policy {policy.value!r} needs a key_source")
        if self.auth not in AUTH_MODES:
            raise InvalidParameter(f"auth must be one of {AUTH_MODES}")
        if self.auth == "psk" and self.key_source is None:
            raise InvalidParameter("psk authentication needs a key_source")
        if not self.suites or any(SUITES.get(s.code) != s for s in self.suites):
            raise InvalidParameter("suites must be a non-empty tuple of HKX/1 suites")
        if len({s.code for s in self.suites}) != len(self.suites):
            raise InvalidParameter("a suite appears twice")
        if policy.requires_pq and not any(s.post_quantum for s in self.suites):
            raise InvalidParameter(
                f"security policy {policy.value!r} needs a post-quantum suite")
        for scheme in self.signature_schemes:
            if scheme not in ALL_SCHEMES:
                raise UnknownAlgorithm(f"unknown signature scheme {scheme!r}")
        if not 1 <= self.qkd_keys_per_handshake <= 16:
            raise InvalidParameter("qkd_keys_per_handshake must be 1..16")
        if self.key_update_interval is not None:
            limit = min(AEAD_RECORD_LIMITS[s.aead] for s in self.suites)
            if not 2 <= self.key_update_interval <= limit:
                raise InvalidParameter(f"key_update_interval must be 2..{limit} records")

    @property
    def policy(self) -> SecurityPolicy:
        assert isinstance(self.security, SecurityPolicy)
        return self.security
