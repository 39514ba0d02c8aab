"""The CI slice of the decoder fuzz campaign (tests/fuzz, docs/fuzzing.md), and the inputs
it found, kept as regressions.

Every decoder that takes bytes from outside either decodes or raises its typed error;
anything else is a crash, and an input slower than the per-input limit is a hang.  The
long campaign runs over a million inputs with atheris; here each target gets a few
thousand mutated inputs from the seeded engine, well under a minute in all.
"""

from __future__ import annotations

import time

import pytest

from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.kme.calls import KMEStatus, decode_answer
from hybridkex.qkd.distillation.messages import MAX_ABORT_REASON, Abort
from hybridkex.site.directory import SiteSettings
from hybridkex.site.errors import SiteError
from tests.fuzz import campaign
from tests.fuzz.targets import TARGETS, Target

INPUTS_PER_TARGET = 4000
TIME_LIMIT_S = 5.0  # per input; the slowest seen is well below 0.1 s


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_slice_of_the_campaign_finds_no_crash_and_no_hang(name: str) -> None:
    tally, failures = campaign.run_mutate(name, INPUTS_PER_TARGET, seed=20240601,
                                          timeout_s=TIME_LIMIT_S)
    assert tally.inputs == INPUTS_PER_TARGET
    assert failures == [], failures[:3]
    assert tally.refused > 0  # the mutants reach the decoder's checks, not only its happy path


def test_the_engine_reports_a_crash_and_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slice can fail: an untyped exception is a crash, a slow input a hang."""
    def crashy(data: bytes) -> None:
        if len(data) % 3 == 0:
            raise IndexError("not a typed error")

    def slow(data: bytes) -> None:
        if len(data) % 5 == 0:
            time.sleep(0.3)

    seeds = TARGETS["qkd-frames"].seeds
    monkeypatch.setitem(TARGETS, "qkd-frames", Target("qkd-frames", crashy, (), seeds))
    tally, failures = campaign.run_mutate("qkd-frames", 200, seed=1, timeout_s=5.0)
    assert tally.crashes > 0 and all(outcome.startswith("crash: IndexError")
                                     for _, outcome in failures)
    monkeypatch.setitem(TARGETS, "qkd-frames", Target("qkd-frames", slow, (), seeds))
    tally, failures = campaign.run_mutate("qkd-frames", 30, seed=1, timeout_s=0.1)
    assert tally.hangs > 0 and {outcome for _, outcome in failures} == {"hang"}


def test_the_mutants_are_reproducible_and_varied() -> None:
    seeds = list(TARGETS["kme-bodies"].seeds())
    first = list(campaign.mutate_inputs(seeds, 500, seed=3))
    assert first == list(campaign.mutate_inputs(seeds, 500, seed=3))
    assert first[:len(seeds)] == seeds
    assert len(set(first)) > 400


# -- regressions: inputs the campaign found --------------------------------------------


def test_a_deeply_nested_kme_answer_is_not_json_rather_than_a_crash() -> None:
    """Found by the kme-answers target: json.loads raised RecursionError (not a
    ValueError), which escaped the client's decoding."""
    for raw in (b"[" * 100_000, b'{"a":' * 50_000):
        assert decode_answer(raw) is None
        with pytest.raises(KeySourceError):
            KMEStatus.from_json(decode_answer(raw))


def test_an_abort_reason_cut_at_the_limit_stays_whole_characters() -> None:
    """Found by the qkd-messages target: cutting the UTF-8 reason at 200 bytes split a
    character, so the message did not re-encode to itself."""
    reason = "x" + "é" * 150
    encoded = Abort(reason).encode()
    assert len(encoded) <= MAX_ABORT_REASON
    assert Abort.decode(encoded).reason == reason[:len(Abort.decode(encoded).reason)]
    assert Abort(Abort.decode(encoded).reason).encode() == encoded


def test_a_site_toml_integer_too_long_to_convert_is_a_site_error() -> None:
    """Found by the site-toml target (mutate engine, seed 11): tomllib refuses integers
    of more than 4300 digits with a plain ValueError, which escaped ``from_toml``."""
    with pytest.raises(SiteError, match="4300 digits"):
        SiteSettings.from_toml("E = " + "1" * 5000 + "\n", "site.toml")


@pytest.mark.parametrize("line", ["handshake_timeout_s = nan", "handshake_timeout_s = inf",
                                  "links = {peer = 1}"])
def test_a_site_toml_value_later_code_could_not_use_is_refused(line: str) -> None:
    text = 'name = "a"\nsignature = "Ed25519"\nidentity = "x509-self-signed"\n' + line + "\n"
    with pytest.raises(SiteError):
        SiteSettings.from_toml(text, "site.toml")
