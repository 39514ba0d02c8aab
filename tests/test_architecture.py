"""The house as ../shared/DESIGN.md draws it: which room may import which, and what the
channel layers must never load.

Three rules, each checked against the code as it is (never against a list the code
keeps about itself):

1. **Light channel layers.**  In a fresh interpreter, ``import hybridkex.protocol`` (and
   likewise ``.transport``, ``.tls``, ``.asyncio`` and ``.keydelivery``) loads none of
   numpy, sqlite3, http.client and aiohttp, nor any module of the QKD link, the site
   directory, the demos or the command line: read from ``sys.modules`` afterwards.
2. **A channel command starts light.**  ``python -m hybridkex serve --help`` and
   ``connect --help`` import no numpy: read from ``python -X importtime``, which lists
   every module a run imports (a failure shows the chain of imports that reached it).
3. **Imports point down.**  Every import statement in hybridkex/, including those
   inside functions, is parsed with :mod:`ast` and checked against :data:`MAY_IMPORT`;
   where a room may reach another only lazily (:data:`LAZY_ONLY`), the import must sit
   inside a function (or under ``TYPE_CHECKING``), so that importing the room does not
   load the other.  A failure lists every offending import as ``file:line``.

Modules are placed in rooms by package prefix (:data:`ROOMS`), so files may move inside
a room (``qkd/distillation/``, a ``site/`` package, ``demos/``) without touching this test;
a module in no room fails :func:`test_every_module_is_in_a_room` until it is placed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "hybridkex"

# -- the table ----------------------------------------------------------------------------

# The channel stack of DESIGN.md, lowest first; each room may import every room below it.
# (DESIGN.md's drawing lists tls under transport; in the code hybridkex.tls builds on
# transport's streams and transport knows nothing of TLS, so tls sits above.  asyncio is
# hybridkex/asyncio.py, the asyncio face of the channel.)
STACK = ("errors", "primitives", "combiner", "keydelivery", "protocol", "transport", "tls",
         "asyncio")


def _below(room: str) -> frozenset[str]:
    return frozenset(STACK[:STACK.index(room)])


# Module prefix -> room; the longest matching prefix decides.  ``hybridkex`` itself (the
# package's __init__, its front door) is the room "package".
ROOMS: dict[str, str] = {
    **{f"hybridkex.{room}": room for room in STACK},
    "hybridkex.qkd": "qkd",
    "hybridkex.site": "site",
    "hybridkex.selftest": "selftest",
    "hybridkex.demos": "demos",
    "hybridkex.cli": "cli",
    "hybridkex.__main__": "cli",
}
PACKAGE_ROOM = "package"

ALL_ROOMS = frozenset({*STACK, "qkd", "site", "selftest", PACKAGE_ROOM, "demos", "cli"})

# Room -> the other rooms its modules may import (its own always).
MAY_IMPORT: dict[str, frozenset[str]] = {
    **{room: _below(room) for room in STACK},
    # The QKD link: physics and distillation.  DESIGN.md draws it under keydelivery, but
    # the link deposits into key delivery's stores and key delivery imports nothing of
    # the link, so it stands beside the channel, above keydelivery; nothing of the
    # channel (protocol, transport, tls, asyncio) imports it.
    "qkd": frozenset({"errors", "primitives", "combiner", "keydelivery"}),
    # A site directory: credentials, site.toml, pairing (which runs the link, lazily).
    "site": _below("asyncio") | {"qkd"},
    # The known-answer self-test behind ``hybridkex selftest``.
    "selftest": frozenset({"errors", "primitives", "combiner"}),
    # hybridkex/__init__.py: the errors, and transport's Context and SecureSocket on
    # first use (lazily, so ``import hybridkex.primitives`` stays cheap).
    PACKAGE_ROOM: frozenset({"errors", "transport"}),
    # Showpieces outside the core library: anything but the command line.
    "demos": ALL_ROOMS - {"cli"},
    # The command line may import anything; nothing imports it.
    "cli": ALL_ROOMS,
}

# (room, other room) -> why the import must be lazy.
LAZY_ONLY: dict[tuple[str, str], str] = {
    ("site", "qkd"): "serve and connect load a site; only pairing needs the QKD link "
                     "(and numpy)",
    (PACKAGE_ROOM, "transport"): "every hybridkex module loads the package's __init__",
}

# What importing a channel layer must not load: heavy or network-facing dependencies,
# and the rooms above or beside the channel.
HEAVY = ("numpy", "sqlite3", "http.client", "aiohttp")
NOT_THE_CHANNEL = ("hybridkex.qkd", "hybridkex.site", "hybridkex.demos", "hybridkex.cli")
LIGHT_LAYERS = ("hybridkex.protocol", "hybridkex.transport", "hybridkex.tls",
                "hybridkex.asyncio", "hybridkex.keydelivery")


# -- reading imports ------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import in a module of the package: where it is, what it names, and whether it
    runs only later (inside a function, or under TYPE_CHECKING)."""

    path: Path
    line: int
    target: str
    lazy: bool


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, package_dir: Path) -> bool:
    base = package_dir.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _ours(name: str, package_dir: Path) -> bool:
    return name == package_dir.name or name.startswith(package_dir.name + ".")


def _type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(path: Path, package_dir: Path) -> list[Import]:
    """Every import of a module of the package in ``path``, at any depth.  ``from X
    import Y`` names the module X.Y when there is one (``from hybridkex import
    primitives``), else X; relative imports are resolved; ``importlib.import_module``
    with a literal name counts too."""
    module = module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(node: ast.AST, target: str, lazy: bool) -> None:
        found_here = Import(path, getattr(node, "lineno", 0), target, lazy)
        if _ours(target, package_dir) and found_here not in found:
            found.append(found_here)

    def from_import(node: ast.ImportFrom, lazy: bool) -> None:
        if node.level:
            parts = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            add(node, candidate if _is_module(candidate, package_dir) else base, lazy)

    def walk(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, lazy)
        elif isinstance(node, ast.ImportFrom):
            from_import(node, lazy)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
              in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            add(node, node.args[0].value, lazy)
        if isinstance(node, ast.If) and _type_checking(node.test):
            for statement in node.body:
                walk(statement, True)
            for statement in node.orelse:
                walk(statement, lazy)
            return
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            walk(child, inner)

    walk(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def room_of(module: str, package_dir: Path = PACKAGE) -> str | None:
    if module == package_dir.name:
        return PACKAGE_ROOM
    matches = [prefix for prefix in ROOMS
               if module == prefix or module.startswith(prefix + ".")]
    return ROOMS[max(matches, key=len)] if matches else None


def modules(package_dir: Path) -> list[Path]:
    return sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)


def offences(package_dir: Path = PACKAGE) -> list[str]:
    """``file:line: what is wrong``, for every import that breaks the table."""
    found = []
    for path in modules(package_dir):
        importer = module_name(path, package_dir)
        room = room_of(importer, package_dir)
        if room is None:
            continue  # test_every_module_is_in_a_room says so
        for imp in imports_of(path, package_dir):
            target_room = room_of(imp.target, package_dir)
            where = f"{path.relative_to(package_dir.parent)}:{imp.line}"
            if target_room is None:
                found.append(f"{where}: imports {imp.target}, which is in no room")
            elif target_room == room:
                continue
            elif target_room not in MAY_IMPORT[room]:
                allowed = ", ".join(sorted(MAY_IMPORT[room])) or "nothing"
                found.append(f"{where}: {room} imports {imp.target} ({target_room}); "
                             f"{room} may import only {allowed}")
            elif (room, target_room) in LAZY_ONLY and not imp.lazy:
                found.append(f"{where}: {room} imports {imp.target} ({target_room}) at "
                             f"module level; only inside a function, because "
                             f"{LAZY_ONLY[room, target_room]}")
    return found


# -- rule 3: imports point down -------------------------------------------------------------


def test_every_module_is_in_a_room() -> None:
    homeless = [module_name(p, PACKAGE) for p in modules(PACKAGE)
                if room_of(module_name(p, PACKAGE)) is None]
    assert not homeless, f"modules in no room of ROOMS: {homeless}"


def test_imports_point_down_the_house() -> None:
    found = offences()
    assert not found, "imports against the layer rules:\n" + "\n".join(found)


def test_the_table_keeps_the_rules_design_md_states() -> None:
    """Edits to the table that would let the house fall are caught here."""
    for room in ("protocol", "transport", "tls", "asyncio", "keydelivery"):
        assert not MAY_IMPORT[room] & {"qkd", "site", "demos", "cli", PACKAGE_ROOM}, room
    assert MAY_IMPORT["qkd"] <= {"errors", "primitives", "combiner", "keydelivery"}
    assert [room for room, allowed in MAY_IMPORT.items() if "cli" in allowed] == ["cli"]
    assert {room for room, allowed in MAY_IMPORT.items() if "demos" in allowed} == {
        "demos", "cli"}


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "hybridkex"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return package


def test_the_checker_finds_every_kind_of_offence(tmp_path: Path) -> None:
    """The rule-3 reader on a made-up package: an upward import at module level, one
    inside a function, a relative one, ``from hybridkex import <module>``, a literal
    import_module, an eager import where only a lazy one is allowed; and the imports
    that are fine (down the stack, lazy where lazy is required, under TYPE_CHECKING)."""
    package = _fake_package(tmp_path, {
        "errors.py": "",
        "qkd/link.py": "from hybridkex.errors import X\n",
        "protocol/wire.py": (
            "from hybridkex.errors import X\n"            # fine: down
            "from ..qkd import link\n"                     # 2: relative, up
            "def f():\n"
            "    from hybridkex.site import Site\n"        # 4: inside a function, up
        ),
        "transport/socket.py": (
            "from hybridkex import qkd\n"                  # 1: a module by from-import
            "import importlib\n"
            "importlib.import_module('hybridkex.cli')\n"   # 3: literal import_module
        ),
        "site.py": (
            "from typing import TYPE_CHECKING\n"
            "from hybridkex.qkd.link import L\n"           # 2: eager, must be lazy
            "if TYPE_CHECKING:\n"
            "    from hybridkex.qkd import link\n"         # fine: never runs
            "def pair():\n"
            "    from hybridkex.qkd.link import L\n"       # fine: lazy
        ),
    })
    found = offences(package)
    assert [f.split(": ", 1)[0] for f in found] == [
        "hybridkex/protocol/wire.py:2", "hybridkex/protocol/wire.py:4",
        "hybridkex/site.py:2",
        "hybridkex/transport/socket.py:1", "hybridkex/transport/socket.py:3"], found
    assert "protocol imports hybridkex.qkd.link (qkd)" in found[0]
    assert "protocol imports hybridkex.site (site)" in found[1]
    assert "at module level" in found[2] and "pairing" in found[2]
    assert "transport imports hybridkex.qkd (qkd)" in found[3]
    assert "transport imports hybridkex.cli (cli)" in found[4]


# -- rule 1: light channel layers -----------------------------------------------------------


def _loaded_after_import(module: str) -> set[str]:
    """sys.modules of a fresh interpreter after ``import module``."""
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout))


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", LIGHT_LAYERS)
def test_a_channel_layer_loads_nothing_heavy(layer: str) -> None:
    loaded = _loaded_after_import(layer)
    assert layer in loaded  # the check is not vacuous
    heavy = sorted(m for m in loaded if _within(m, HEAVY + NOT_THE_CHANNEL))
    assert not heavy, f"import {layer} loads {heavy}"


# -- rule 2: a channel command starts light ---------------------------------------------------


def _imported(stderr: str) -> list[tuple[int, str]]:
    """(depth, module) per line of ``-X importtime``, in its order: a module comes after
    everything it imported, one level deeper."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        field = line.rsplit("|", 1)[1]
        name = field.lstrip()
        entries.append(((len(field) - len(name)) // 2, name))
    return entries


def _chain(entries: list[tuple[int, str]], index: int) -> list[str]:
    """Who imported ``entries[index]``: the next shallower entries after it."""
    depth, name = entries[index]
    chain = [name]
    for d, n in entries[index + 1:]:
        if d < depth:
            chain.append(n)
            depth = d
    return chain[::-1]


@pytest.mark.parametrize("command", ["serve", "connect"])
def test_channel_command_help_does_not_import_numpy(command: str) -> None:
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "hybridkex", command,
                          "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
    entries = _imported(run.stderr)
    names = [name for _, name in entries]
    assert "hybridkex.cli" in names  # the list was read right
    if "numpy" in names:
        chain = _chain(entries, names.index("numpy"))
        pytest.fail(f"hybridkex {command} --help imports numpy: {' -> '.join(chain)}")
