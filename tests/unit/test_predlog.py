"""The prediction log and its feedback on a real SQLite file, and the live-quality statistics: labels
land once and all or nothing, late labels are kept and said to be late, retention holds its bounds,
each version's accuracy is what the test's own labels say, and the intervals hold their truth at
every look (simulated, seeded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from artifact import predlog
from controller.core import drift, quality


def prediction(rid: str, at: float, label: str, *, version: int = 1, slot: str = "blue", shadow: bool = False):  # type: ignore[no-untyped-def]
    return (
        rid,
        at,
        "sample",
        version,
        slot,
        int(shadow),
        f"text of {rid}",
        f"digest-{rid}",
        label,
        0.8,
        len(f"text of {rid}"),
    )


@pytest.fixture
def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    conn = predlog.connect(tmp_path / "predictions.sqlite")
    yield conn
    conn.close()


def test_the_log_is_owner_only_and_a_planted_link_is_refused(tmp_path: Path) -> None:
    predlog.connect(tmp_path / "mine.sqlite").close()
    assert os.stat(tmp_path / "mine.sqlite").st_mode & 0o777 == 0o600
    (tmp_path / "target").write_text("someone else's file")
    os.symlink(tmp_path / "target", tmp_path / "link.sqlite")
    with pytest.raises(PermissionError, match="refusing to use it"):
        predlog.connect(tmp_path / "link.sqlite")
    assert (tmp_path / "target").read_text() == "someone else's file"


def test_labels_land_once_and_a_second_label_replaces_the_first(log) -> None:  # type: ignore[no-untyped-def]
    predlog.write(log, [prediction("a", 1.0, "Energy"), prediction("b", 2.0, "Utilities")])
    first = predlog.add_feedback(log, [("a", "Energy"), ("b", "Energy")], {"Energy", "Utilities"})
    assert (first.stored, first.replaced, first.late) == (2, 0, 0)
    again = predlog.add_feedback(log, [("b", "Utilities")], {"Energy", "Utilities"})
    assert (again.stored, again.replaced) == (1, 1)
    [reading] = predlog.quality(log)
    assert (reading.answered, reading.labelled, reading.correct) == (2, 2, 2)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([("a", "Energy"), ("nobody", "Energy")], "unknown request_id 'nobody'"),
        ([("a", "Energy"), ("b", "Astrology")], "unknown label 'Astrology'"),
        ([("a", "Energy"), ("", "Energy")], "request_id must be text"),
    ],
)
def test_a_batch_with_one_bad_item_stores_nothing_and_names_it(log, labels, reason) -> None:  # type: ignore[no-untyped-def]
    predlog.write(log, [prediction("a", 1.0, "Energy"), prediction("b", 2.0, "Utilities")])
    with pytest.raises(predlog.FeedbackRefused, match=reason):
        predlog.add_feedback(log, labels, {"Energy", "Utilities"})
    assert log.execute("SELECT count(*) FROM feedback").fetchone() == (0,)


def test_retention_keeps_its_bounds_and_a_late_label_is_stored_and_said_to_be_late(log) -> None:  # type: ignore[no-untyped-def]
    predlog.write(log, [prediction(f"r{i}", float(i), "Energy") for i in range(100)])
    gone = predlog.prune(log, max_age=1000.0, max_rows=40, now=500.0)  # 60 too many; none too old
    assert gone == 60 and log.execute("SELECT min(at), count(*) FROM predictions").fetchone() == (60.0, 40)
    assert predlog.prune(log, max_age=30.0, max_rows=40, now=120.0) == 30  # now by age: at < 90 goes
    late = predlog.add_feedback(log, [("r5", "Energy"), ("r95", "Energy")], None, now=121.0)
    assert (late.stored, late.late) == (2, 1)
    # the memory of dropped ids is bounded too: after max_age more, an id is unknown
    predlog.prune(log, max_age=30.0, max_rows=40, now=1000.0)
    with pytest.raises(predlog.FeedbackRefused, match="unknown request_id 'r6'"):
        predlog.add_feedback(log, [("r6", "Energy")], None)


def test_live_accuracy_and_the_paired_comparison_are_what_the_labels_say(log) -> None:  # type: ignore[no-untyped-def]
    truth = {f"r{i}": "Energy" if i % 2 else "Utilities" for i in range(40)}
    live = [prediction(r, 1.0, "Energy") for r in truth]  # right on the odd half
    candidate = [
        prediction(r, 1.0, truth[r] if i < 30 else "Other", version=2, slot="green", shadow=True)
        for i, r in enumerate(truth)
    ]
    predlog.write(log, live + candidate)
    predlog.add_feedback(log, list(truth.items()), None)
    by_version = {q.version: q for q in predlog.quality(log)}
    assert by_version[1].accuracy == 0.5 and by_version[2].accuracy == 30 / 40 and by_version[2].shadow
    outcomes = predlog.paired(log, (2, "green"), (1, "blue"))
    compared = quality.paired(outcomes, 0.05)
    # only the candidate is right on the even r0..r28 (15), only live on the odd r31..r39 (5)
    assert (compared.pairs, compared.challenger_only, compared.champion_only) == (40, 15, 5)
    assert compared.difference == pytest.approx(0.25)
    assert compared.interval[0] < 0.25 < compared.interval[1]


def test_the_accuracy_interval_holds_its_truth_at_every_look() -> None:
    # 300 simulated versions of known accuracy, read after every label up to 400: the share whose
    # interval ever misses the truth stays under the stated 5%
    rng = np.random.default_rng(7)
    truth, alpha, runs, looks = 0.8, 0.05, 300, 400
    missed = 0
    for _ in range(runs):
        right = np.cumsum(rng.random(looks) < truth)
        for n in range(10, looks + 1, 10):
            [reading] = quality.read([_quality(int(right[n - 1]), n)], alpha)
            assert reading.interval is not None
            if not reading.interval[0] <= truth <= reading.interval[1]:
                missed += 1
                break
    assert missed / runs <= alpha


def test_the_paired_interval_holds_its_truth_at_every_look() -> None:
    rng = np.random.default_rng(11)
    alpha, runs, looks = 0.05, 200, 400
    missed = 0
    for _ in range(runs):
        # the challenger is right on 82% and live on 80%, agreeing on most: a true difference of 0.02
        u = rng.random(looks)
        champion = u < 0.80
        challenger = (u < 0.78) | ((u >= 0.80) & (u < 0.84))
        outcomes = list(zip(challenger.tolist(), champion.tolist(), strict=True))
        for n in range(20, looks + 1, 20):
            lo, hi = quality.paired(outcomes[:n], alpha).interval
            if not lo <= 0.02 <= hi:
                missed += 1
                break
    assert missed / runs <= alpha


def _quality(correct: int, labelled: int) -> predlog.Quality:
    return predlog.Quality("m", 1, "blue", False, labelled, labelled, correct, None, 0.8)


def test_retraining_rows_are_each_input_once_with_its_latest_label(log) -> None:  # type: ignore[no-untyped-def]
    same = prediction("a", 1.0, "Energy")
    again = (*("b",), *same[1:])  # the same input asked again under another id
    shadow = prediction("c", 1.0, "Energy", version=2, slot="green", shadow=True)
    predlog.write(log, [same, again, shadow, prediction("d", 2.0, "Energy")])
    predlog.add_feedback(log, [("a", "Energy"), ("d", "Utilities"), ("c", "Energy")], None, now=10.0)
    predlog.add_feedback(log, [("b", "Utilities")], None, now=20.0)  # a later correction of the same input
    rows = predlog.labelled(log)
    assert sorted((text, label) for text, label, _, _ in rows) == [
        ("text of a", "Utilities"),
        ("text of d", "Utilities"),
    ]


def test_the_live_label_gate_passes_only_what_the_interval_shows() -> None:
    nothing = quality.paired([], 0.05)
    assert "no labelled request" in (quality.gate(nothing, "better", 0.0, 0.95) or "")
    assert quality.gate(nothing, "off", 0.0, 0.95) is None
    # the candidate alone right on 120 of 1000, live alone on 20: clearly better
    clear = quality.paired([(True, False)] * 120 + [(False, True)] * 20 + [(True, True)] * 860, 0.05)
    assert quality.gate(clear, "better", 0.0, 0.95) is None
    # a small loss (30 against 40 of 1000): not shown better, but surely within a 10-point margin
    close = quality.paired([(True, False)] * 30 + [(False, True)] * 40 + [(True, True)] * 930, 0.05)
    assert quality.gate(close, "better", 0.0, 0.95) is not None
    assert quality.gate(close, "not-worse", 0.1, 0.95) is None
    assert quality.gate(close, "not-worse", 0.0, 0.95) is not None


def test_drift_alerts_on_inputs_unlike_training_and_rarely_on_inputs_like_it(log) -> None:  # type: ignore[no-untyped-def]
    training = {"Energy": 50, "Utilities": 50}
    rules = {"alpha": 0.05, "max_outside": 0.10, "max_label_shift": 0.25, "min_answers": 200}
    # inputs like the training ones: 2% outside the 1st-99th percentile; read after every 20 answers
    rng = np.random.default_rng(3)
    alarms = 0
    for _ in range(200):
        outside = np.cumsum(rng.random(2000) < 0.02)
        for n in range(20, 2001, 20):
            found = predlog.Inputs(n, n, int(outside[n - 1]), {"Energy": n // 2, "Utilities": n - n // 2})
            if drift.read(1, found, training, **rules).alerts:
                alarms += 1
                break
    assert alarms / 200 <= 0.05
    # a third of the inputs far longer than any in training, and every answer one class, in the log
    rows = [prediction(f"r{i}", float(i), "Energy") for i in range(300)]
    rows = [(*row[:10], 5000 if i % 3 == 0 else row[10]) for i, row in enumerate(rows)]
    predlog.write(log, rows)
    found = predlog.inputs(log, 1, (5, 100))
    assert (found.answered, found.measured, found.outside) == (300, 300, 100)
    reading = drift.read(1, found, training, **rules)
    assert len(reading.alerts) == 2 and reading.words().startswith("v1: DRIFT: 33.3% of inputs outside")
