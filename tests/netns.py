"""Two hosts on one machine, for tests of what crosses a network between two sites.

As root (CI runs as root), :func:`two_hosts` creates two network namespaces joined
by a veth pair, with addresses that exist only inside those namespaces: host A is
10.200.N.1, host B is 10.200.N.2.  A process started with :meth:`Host.popen` runs
inside its host's namespace and can reach the other host only over the veth pair.

Where namespaces cannot be made (not root, no ``ip``), both hosts fall back to the
loopback interface of this machine; :attr:`Host.isolated` is then False and the
fallback is announced on stderr and recorded in ``FALLBACKS``, never silent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FALLBACKS", "Host", "namespaces_available", "two_hosts"]

FALLBACKS: list[str] = []


@dataclass(frozen=True)
class Host:
    """One emulated host: a namespace (or this machine's loopback) and its address."""

    name: str
    address: str
    namespace: str | None

    @property
    def isolated(self) -> bool:
        return self.namespace is not None

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it runs on this host."""
        if self.namespace is None:
            return list(argv)
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(argv), check=False, **kwargs)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def namespaces_available() -> tuple[bool, str]:
    """Whether this process can make network namespaces, and if not, why."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "not running as root"
    if shutil.which("ip") is None:
        return False, "the ip command (iproute2) is not installed"
    return True, ""


@contextlib.contextmanager
def two_hosts(tag: str = "t") -> Iterator[tuple[Host, Host]]:
    """Host A and host B joined by a veth pair; removed again on exit."""
    ok, why = namespaces_available()
    suffix = f"{tag}{os.getpid() % 10000}"
    ns_a, ns_b = f"hkx-a-{suffix}", f"hkx-b-{suffix}"
    if ok:
        try:
            _setup(ns_a, ns_b, subnet=os.getpid() % 200 + 20)
        except (subprocess.CalledProcessError, OSError) as exc:
            _teardown(ns_a, ns_b)
            ok, why = False, f"ip netns failed: {_reason(exc)}"
    if not ok:
        message = f"network namespaces unavailable ({why}): both hosts run on loopback"
        FALLBACKS.append(message)
        print(f"netns: {message}", file=sys.stderr)
        yield Host("A", "127.0.0.1", None), Host("B", "127.0.0.1", None)
        return
    subnet = os.getpid() % 200 + 20
    try:
        yield (Host("A", f"10.200.{subnet}.1", ns_a), Host("B", f"10.200.{subnet}.2", ns_b))
    finally:
        _teardown(ns_a, ns_b)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return (exc.stderr or b"").decode(errors="replace").strip() or str(exc)
    return str(exc)


def _setup(ns_a: str, ns_b: str, subnet: int) -> None:
    _teardown(ns_a, ns_b)
    veth_a, veth_b = f"v{ns_a[-10:]}", f"v{ns_b[-10:]}"
    _ip("netns", "add", ns_a)
    _ip("netns", "add", ns_b)
    _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
    _ip("link", "set", veth_a, "netns", ns_a)
    _ip("link", "set", veth_b, "netns", ns_b)
    for ns, veth, host in ((ns_a, veth_a, 1), (ns_b, veth_b, 2)):
        _ip("-n", ns, "addr", "add", f"10.200.{subnet}.{host}/24", "dev", veth)
        _ip("-n", ns, "link", "set", veth, "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def _teardown(*namespaces: str) -> None:
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], check=False,
                       capture_output=True)
