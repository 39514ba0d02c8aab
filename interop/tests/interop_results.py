"""A pytest plugin that turns the interop suite's outcomes into interop/RESULTS.md.

It watches every test of the session: the interop tests (by their ``cell`` or
``limitation`` parameter) and the kyber-py / dilithium-py cross-checks of
tests/test_crosscheck.py that the matrix refers to (by function and parameters).
At the end of a session in which every cell of the matrix was decided, it writes
the matrix; after a partial run (``-k``, one file) it leaves RESULTS.md alone and
says which cells did not run.  The file has no timestamp: it changes only when an
outcome or a version does.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from interop_matrix import (
    COLUMNS,
    DESCRIPTIONS,
    PEERS,
    TABLES,
    Cell,
    CoveredBy,
    NotSupported,
    Reference,
    Run,
    Status,
    status,
)

from hybridkex import primitives

CROSSCHECK = "tests/test_crosscheck.py"


@dataclass
class Outcome:
    """One test item's outcome over its setup, call and teardown."""

    nodeid: str
    state: str = "not run"  # "pass", "fail", "skipped", "not run"
    message: str = ""

    def update(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.state = "fail"
            crash = getattr(report.longrepr, "reprcrash", None)
            text = getattr(crash, "message", None) or str(report.longrepr)
            lines = text.strip().splitlines()
            self.message = f"{report.when}: {lines[0] if lines else 'failed'}"
        elif report.skipped and self.state != "fail":
            self.state = "skipped"
            longrepr = report.longrepr
            self.message = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        elif report.when == "call" and report.passed and self.state == "not run":
            self.state = "pass"


def _aggregate(outcomes: Iterable[Outcome]) -> Outcome:
    """Fail if any failed, else skipped if any skipped, else pass if all passed."""
    found = list(outcomes)
    for state in ("fail", "skipped", "not run"):
        for outcome in found:
            if outcome.state == state:
                return outcome
    return found[0] if found else Outcome("", "not run")


class _Notes:
    """Numbered footnotes of one table, each text once."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _escape(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


class Results:
    """Registered as a plugin by interop/tests/conftest.py."""

    def __init__(self, output: Path, repo: Path) -> None:
        self.output = output
        self.repo = repo
        self.versions: dict[str, str] = {}  # peer -> version text, set by the fixtures
        self._cells: dict[Cell, dict[str, Outcome]] = {}
        self._limitations: dict[str, dict[str, Outcome]] = {}
        self._references: dict[Reference, dict[str, Outcome]] = {}
        self._summary: list[str] = []

    # -- collecting -------------------------------------------------------------------

    def _buckets(self, item: pytest.Item) -> Iterator[dict[str, Outcome]]:
        callspec = getattr(item, "callspec", None)
        params: dict[str, Any] = dict(callspec.params) if callspec is not None else {}
        cell = params.get("cell")
        if isinstance(cell, Cell):
            yield self._cells.setdefault(cell, {})
        limitation = params.get("limitation")
        if isinstance(limitation, str) and item.path.parent == self.output.parent / "tests":
            yield self._limitations.setdefault(limitation, {})
        if item.path == self.repo / CROSSCHECK and isinstance(params.get("name"), str):
            function = getattr(item, "originalname", item.name)
            name = params["name"]
            yield self._references.setdefault(Reference(function, name), {})
            if isinstance(params.get("ctx"), bytes):
                empty = params["ctx"] == b""
                yield self._references.setdefault(Reference(function, name, empty), {})

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        for bucket in self._buckets(item):
            bucket.setdefault(item.nodeid, Outcome(item.nodeid)).update(report)
        return report

    # -- deciding cells ---------------------------------------------------------------

    def _cell(self, cell: Cell, how: Status, notes: _Notes) -> tuple[str, str | None]:
        """The cell's text, and what it still waits for (None: decided)."""
        if isinstance(how, Run):
            outcome = _aggregate(self._cells.get(cell, {}).values())
            return (self._render(outcome, None, notes),
                    f"interop/tests {cell.row.test}" if outcome.state == "not run" else None)
        if isinstance(how, CoveredBy):
            outcomes = [self._references.get(ref, {}) for ref in how.tests]
            outcome = (_aggregate(o for found in outcomes for o in found.values())
                       if all(outcomes) else Outcome("", "not run"))
            names = ", ".join(dict.fromkeys(ref.function for ref in how.tests))
            covered = f"checked by {CROSSCHECK} ({names}), not repeated here"
            return (self._render(outcome, covered, notes),
                    CROSSCHECK if outcome.state == "not run" else None)
        assert isinstance(how, NotSupported)
        if how.limitation is None:
            return f"not supported {notes.ref(how.reason)}", None
        check = _aggregate(self._limitations.get(how.limitation, {}).values())
        if check.state == "pass":
            return f"not supported {notes.ref(how.reason)}", None
        if check.state == "not run":
            return "not run", f"limitation check {how.limitation}"
        text = (f"not supported, but the check that this still holds failed ({check.nodeid}: "
                f"{check.message}): if the peer now does this, run the cell "
                "(interop/tests/interop_matrix.py)")
        return f"**FAIL** {notes.ref(text)}", None

    @staticmethod
    def _render(outcome: Outcome, covered: str | None, notes: _Notes) -> str:
        if outcome.state == "pass":
            return f"pass {notes.ref(covered)}" if covered else "pass"
        if outcome.state == "not run":
            return "not run"
        detail = f"{outcome.nodeid}: {outcome.message}"
        if covered:
            detail = f"{covered}; {detail}"
        label = "**FAIL**" if outcome.state == "fail" else "**skipped**"
        return f"{label} {notes.ref(detail)}"

    # -- the document -----------------------------------------------------------------

    def _version_rows(self) -> list[tuple[str, str]]:
        def dist(name: str) -> str:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                return "not installed"

        unknown = "unknown: the Node.js peer did not start"
        return [
            ("hybridkex (this side)",
             f"{dist('hybridkex')} on {primitives.backend_version()}"),
            ("hybridkex.tls (this side)", f"pyOpenSSL {dist('pyOpenSSL')} on the same OpenSSL"),
            (PEERS["openssl"], self.versions.get("openssl", unknown)),
            (PEERS["liboqs"], self.versions.get("liboqs", unknown)),
            (PEERS["pqcrypto"], f"pqcrypto {dist('pqcrypto')} (PyPI)"),
            (PEERS["kyber-py"], f"kyber-py {dist('kyber-py')} (PyPI)"),
            (PEERS["dilithium-py"], f"dilithium-py {dist('dilithium-py')} (PyPI)"),
            (PEERS["tlslite-ng"], f"tlslite-ng {dist('tlslite-ng')} (PyPI; its ML-KEM is "
                                  f"kyber-py's), in the test process"),
        ]

    def render(self) -> tuple[str, list[tuple[str, str]]]:
        """The markdown, and the cells that did not run in this session (with what each
        waits for)."""
        waiting: list[tuple[str, str]] = []
        counts = {"pass": 0, "fail": 0, "not supported": 0, "other": 0}
        out = [
            "# Interoperability results",
            "",
            "Written by the interop suite (interop/tests, interop/tests/interop_results.py) "
            "at the end of every test run that decides every cell: `bash tests/run.sh`, or "
            "`pytest interop/tests tests/test_crosscheck.py`. Do not edit by hand; "
            "interop/README.md describes the peers and the suite.",
            "",
            "| Implementation | Version |",
            "| --- | --- |",
        ]
        out += [f"| {name} | {_escape(version)} |" for name, version in self._version_rows()]
        body: list[str] = []
        for table, rows in TABLES.items():
            notes = _Notes()
            columns = COLUMNS[table]
            body += ["", f"## {table}", "", DESCRIPTIONS[table], "",
                     "| | " + " | ".join(PEERS[peer] for peer in columns) + " |",
                     "| --- |" + " --- |" * len(columns)]
            for row in rows:
                texts = []
                for peer in columns:
                    cell = Cell(row, peer)
                    text, missing = self._cell(cell, status(row, peer), notes)
                    texts.append(text)
                    if missing is not None:
                        waiting.append((str(cell), missing))
                    key = text.split(" [")[0].strip("*").lower()
                    counts[key if key in counts else "other"] += 1
                body.append(f"| {_escape(row.title)} | " + " | ".join(texts) + " |")
            if notes.texts:
                body.append("")
                body += [f"[{i}] {_escape(text)}  " for i, text in enumerate(notes.texts, 1)]
                body[-1] = body[-1].rstrip()
        total = sum(counts.values())
        out += ["", f"{total} cells: {counts['pass']} pass, {counts['fail']} fail, "
                    f"{counts['not supported']} not supported"
                    + (f", {counts['other']} other" if counts["other"] else "") + "."]
        return "\n".join(out + body) + "\n", waiting

    # -- the end of the session -------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self._cells and not self._limitations:
            return  # no interop test ran: nothing to say
        text, waiting = self.render()
        relative = self.output.relative_to(self.repo)
        if waiting:
            missing = sorted({what for _, what in waiting})
            shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
            self._summary.append(
                f"interop: {relative} not regenerated: {len(waiting)} cell(s) did not run "
                f"in this session (waiting for {shown}); run "
                "`pytest interop/tests tests/test_crosscheck.py` or the whole suite")
            return
        if not self.output.exists() or self.output.read_text() != text:
            self.output.write_text(text)
            self._summary.append(f"interop: wrote {relative}")
        else:
            self._summary.append(f"interop: {relative} is up to date")
        self._summary.append("interop: " + _count_line(text))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self._summary:
            terminalreporter.write_line(line)


def _count_line(text: str) -> str:
    return next(line for line in text.splitlines() if " cells: " in line)
