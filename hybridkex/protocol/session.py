"""What a finished handshake established, as reported by ``session_info()``."""

from __future__ import annotations

from dataclasses import dataclass

from hybridkex.protocol.identity import PeerIdentity
from hybridkex.protocol.suites import POST_QUANTUM_KEMS

__all__ = ["SessionInfo"]


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of a session: what it is really made of, never what was asked for.

    ``fallback`` is ``None`` when the session has everything this side's policy asks
    for first (a QKD key and a post-quantum KEM); otherwise it says what is missing
    and why the policy still allowed the session.
    """

    role: str
    local_site: str
    peer: PeerIdentity
    suite: str
    kems: tuple[str, ...]
    aead: str
    qkd_key_ids: tuple[str, ...]
    auth_mode: str  # "signature" or "psk"
    security_policy: str
    transcript_hash: str  # hex, over ClientHello..client Finished
    pool_keys_spent: int  # 256-bit pool units this side consumed, handshake and re-keys
    fallback: str | None
    key_updates: int = 0  # KeyUpdates this side sent (asked for, answering, or forced)
    qkd_rekeys: int = 0  # QKD re-keys this side started or answered

    @property
    def qkd(self) -> bool:
        return bool(self.qkd_key_ids)

    @property
    def post_quantum(self) -> bool:
        return any(k.algorithm in self.kems for k in POST_QUANTUM_KEMS)
