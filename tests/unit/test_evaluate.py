"""What training tells a person about its mistakes: per class, how much is right and what it is taken
for; and the most confident mistakes with their text, where the next feature is."""

from __future__ import annotations

import numpy as np

from pipeline import evaluate

LABELS = ["Energy", "Technology", "Utilities"]


def test_the_most_confident_mistakes_come_first_with_their_text() -> None:
    texts = ["oil wells", "cloud software", "power grid", "gas pipelines"]
    truth = ["Energy", "Technology", "Utilities", "Energy"]
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.6, 0.1, 0.3], [0.5, 0.3, 0.2]])
    wrong = evaluate.mistakes(texts, truth, proba, LABELS)
    assert [(w["text"], w["predicted"], w["score"]) for w in wrong] == [
        ("cloud software", "Utilities", 0.7),
        ("power grid", "Energy", 0.6),
    ]


def test_each_class_says_what_it_is_most_often_taken_for() -> None:
    holdout = evaluate.score(
        ["Energy"] * 4 + ["Utilities"] * 4, ["Energy"] * 4 + ["Energy", "Energy", "Technology", "Utilities"], LABELS
    )
    lines = evaluate.confusions(holdout, LABELS)
    assert lines == ["Energy: 100% of 4", "Utilities: 25% of 4, most often taken for Energy (2)"]
    files = evaluate.report_files({"holdout": holdout, "grouped_by": "ticker"}, LABELS, [])
    assert files["confusion_matrix.png"].startswith(b"\x89PNG") and b"| true | predicted |" in files["mistakes.md"]
