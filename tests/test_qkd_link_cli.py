"""``hybridkex qkd link --site ...`` and ``hybridkex qkd fiber``: what they refuse, in one
line each, and the one-process form still working beside them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qkd_ends import make_sites

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridkex", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("args", "status", "says"), [
    (["qkd", "link", "--site", "S"], 2, "give --listen HOST:PORT (Bob) or --connect"),
    (["qkd", "link", "--listen", "127.0.0.1:1"], 2, "the two-host options need --site"),
    (["qkd", "link"], 2, "give --site DIR with --listen or --connect"),
    (["qkd", "link", "--site", "S", "--site-a", "a", "--listen", "127.0.0.1:1"], 2,
     "exclude each other"),
    (["qkd", "link", "--site", "S", "--listen", "127.0.0.1:1", "--rounds", "3"], 2,
     "belong to the connecting end"),
    (["qkd", "link", "--site", "S", "--connect", "127.0.0.1:1", "--quantum-listen",
      "127.0.0.1:2"], 2, "belongs to the listening end"),
    (["qkd", "link", "--site", "S", "--connect", "127.0.0.1:1", "--rounds", "2",
      "--target-keys", "5"], 2, "exclude each other"),
    (["qkd", "link", "--site", "S", "--connect", "nowhere"], 2, "HOST:PORT"),
    (["qkd", "link", "--site", "S", "--connect", "127.0.0.1:1", "--clock-hz", "0"], 2,
     "argument --clock-hz: '0' is out of range"),
    (["qkd", "link", "--site", "S", "--connect", "127.0.0.1:1", "--clock-hz", "nan"], 2,
     "argument --clock-hz"),
    (["qkd", "link", "--site", "S", "--connect", "127.0.0.1:1", "--distance-km", "-1"], 2,
     "argument --distance-km"),
    (["qkd", "fiber", "--listen", "127.0.0.1:1", "--connect", "127.0.0.1:2",
      "--distance-km", "inf"], 2, "argument --distance-km"),
    (["qkd", "fiber", "--listen", "127.0.0.1:1", "--connect", "127.0.0.1:2",
      "--eve-fraction", "0.5"], 2, "--eve-fraction needs --eve"),
    (["qkd", "fiber", "--listen", "127.0.0.1:1", "--connect", "127.0.0.1:2", "--eve",
      "pns", "--eve-fraction", "2"], 2, "argument --eve-fraction"),
])
def test_refusals_are_one_line(args: list[str], status: int, says: str) -> None:
    out = run(*args)
    assert out.returncode == status, out.stderr
    assert says in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_site_that_is_not_there_or_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    out = run("qkd", "link", "--site", str(tmp_path / "none"), "--listen", "127.0.0.1:0")
    assert out.returncode == 1 and "not a site directory" in out.stderr
    _, b_dir = make_sites(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = run("qkd", "link", "--site", str(b_dir), "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("hybridkex: cannot listen on")
    assert "Traceback" not in out.stderr


def test_a_damaged_deposit_journal_is_one_line(tmp_path: Path) -> None:
    _, b_dir = make_sites(tmp_path)
    (b_dir / "qkd-link-site-a.db").write_bytes(b"this is not a database" * 200)
    out = run("qkd", "link", "--site", str(b_dir), "--peer", "site-a", "--listen",
              "127.0.0.1:0")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hybridkex: deposit journal ") and "qkd-link-site-a.db" in last
    assert "Traceback" not in out.stderr


def test_the_one_process_form_still_fills_both_stores(tmp_path: Path) -> None:
    out = run("qkd", "link", "--site-a", "A", "--store-a", f"sqlite:///{tmp_path}/a.db",
              "--site-b", "B", "--store-b", f"sqlite:///{tmp_path}/b.db", "--target-keys", "1",
              "--pulses-per-round", "3e8", "--json")
    assert out.returncode == 0, out.stderr
    assert '"keys_deposited"' in out.stdout and "site-a" not in out.stdout
