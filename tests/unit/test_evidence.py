"""The shadow evidence and the gate a promote holds it to, on records as the service writes them: a
candidate is refused only for what the evidence surely shows, with its figures, and a candidate as
good as the floor is refused by noise in at most alpha of simulated evidence read again and again."""

from __future__ import annotations

import json

import numpy as np

from controller.core import evidence
from controller.settings import ControllerSettings

SETTINGS = ControllerSettings()
LABELS = ["Energy", "Technology", "Healthcare", "Utilities"]


def records(
    agree: list[bool], *, live_ms: list[float] | None = None, cand_ms: list[float] | None = None, errors: int = 0
) -> list[bytes]:
    """One line per copy, a row each: ``agree[i]`` whether the candidate answered as live did."""
    lines = []
    for i, same in enumerate(agree):
        live = LABELS[i % len(LABELS)]
        cand = live if same else LABELS[(i + 1) % len(LABELS)]
        lines.append(
            json.dumps(
                {
                    "t": 1000.0 + i / 10,
                    "id": f"r{i}",
                    "live": [live],
                    "live_top": [0.9],
                    "live_ms": live_ms[i] if live_ms else 1.0,
                    "cand": [cand],
                    "cand_top": [0.8],
                    "cand_ms": cand_ms[i] if cand_ms else 1.0,
                    "error": None,
                }
            ).encode()
        )
    for i in range(errors):
        failed = {"t": 2000.0 + i, "id": f"e{i}", "live": ["Energy"], "live_top": [0.9], "live_ms": 1.0}
        lines.append(
            json.dumps(failed | {"cand": None, "cand_top": None, "cand_ms": None, "error": "HTTP 500"}).encode()
        )
    lines.append(b'{"t": 3000.0, "live": ["Ene')  # a line cut short by a killed instance is skipped
    return lines


def test_a_candidate_that_mostly_agrees_passes_with_its_figures() -> None:
    found = evidence.fold(records([i % 10 != 0 for i in range(500)]))
    assert (found.requests, found.compared, found.rows, found.agreed) == (500, 500, 500, 450)
    assert evidence.judge(found, SETTINGS) is None
    lo, hi = evidence.agreement_interval(found, SETTINGS.analysis_alpha / 2) or (0, 0)
    assert lo < 0.9 < hi and hi - lo < 0.15
    assert any(line.startswith("  agreement:  surely between") for line in evidence.render(found, "h", SETTINGS))


def test_one_class_for_everything_is_refused_below_the_floor() -> None:
    found = evidence.fold(records([i % 4 == 0 for i in range(200)]))  # agrees only where live says Energy
    refusal = evidence.judge(found, SETTINGS)
    assert refusal is not None and refusal.startswith("agreement with live is 25.0% over 200 row(s) (surely between")
    assert "below the floor of 50.0% (--shadow-min-agreement; by chance: less than 1 time in 200)" in refusal


def test_a_candidate_as_good_as_the_floor_is_rarely_refused_however_often_it_is_read() -> None:
    rng = np.random.default_rng(3)
    runs, refused = 200, 0
    for _ in range(runs):
        agreed = np.cumsum(rng.random(1000) < SETTINGS.shadow_min_agreement)
        # read after every 50 copies, as a person refreshing `release evidence` would
        reads = (evidence.Evidence(n, n, rows=n, agreed=int(agreed[n - 1])) for n in range(100, 1001, 50))
        if any(evidence.judge(found, SETTINGS) for found in reads):
            refused += 1
    assert refused / runs <= SETTINGS.analysis_alpha / 2 + 2 * np.sqrt(0.005 / runs)


def test_a_slower_candidate_is_refused_on_the_same_requests_and_noise_is_not() -> None:
    rng = np.random.default_rng(9)
    live = list(rng.gamma(4.0, 0.25, 400))  # about 1 ms, with a tail
    same = list(rng.gamma(4.0, 0.25, 400))
    assert evidence.judge(evidence.fold(records([True] * 400, live_ms=live, cand_ms=same)), SETTINGS) is None
    slow = [5 * ms for ms in same]
    refusal = evidence.judge(evidence.fold(records([True] * 400, live_ms=live, cand_ms=slow)), SETTINGS)
    assert refusal is not None and refusal.startswith("the candidate is slower: ")
    assert "(--shadow-max-p99-ratio; by chance: less than 1 time in 200)" in refusal


def test_errors_and_too_little_evidence_are_refused_by_their_rules() -> None:
    failing = evidence.judge(evidence.fold(records([True] * 150, errors=2)), SETTINGS)
    assert failing == "the candidate failed 2 of 152 request(s) (HTTP 500 x2); at most 0 allowed (--shadow-max-errors)"
    few = evidence.judge(evidence.fold(records([True] * 20)), SETTINGS)
    assert few is not None and few.startswith("20 request(s) compared, the minimum is 100")
    assert evidence.judge(evidence.fold([]), SETTINGS.model_copy(update={"shadow_min_requests": 0})) is None
