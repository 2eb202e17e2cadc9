"""The lead sentences as a block of their own: what the block holds, that the service serves it with
scikit-learn's very probabilities, and that a model holding it still loads through the allowlist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from attacks import planted

from artifact.linear import CalibratedLinearText, LeadSentences, with_lead
from artifact.registry import model_bytes
from artifact.trust import load_model
from pipeline import kinds
from pipeline.config import ModelConfig
from support import trust

TEXTS = [
    "Quanex Inc. designs cloud software for hospitals. It was founded in 1930. It is based in Ohio.",
    "Rabri Corp. drills for oil and natural gas in Texas. The company has 3 segments.",
    "Vialnex Inc. licenses microchips.",
] * 8
LABELS = ["Technology", "Energy", "Technology"] * 8


def test_the_lead_block_is_the_first_sentences_words_marked_as_such() -> None:
    marked = with_lead(TEXTS[0], 2)
    assert marked.startswith(TEXTS[0] + " ")
    lead = marked[len(TEXTS[0]) + 1 :].split()
    # "Inc. designs" does not end a sentence; the third sentence is not in the lead
    assert lead[:4] == ["lead_Quanex", "lead_Inc", "lead_designs", "lead_cloud"]
    assert "lead_founded" in lead and "lead_Ohio" not in lead
    assert with_lead("one short sentence", 2) == "one short sentence lead_one lead_short lead_sentence"


def test_the_served_form_gives_scikit_learns_probabilities_with_the_lead_block() -> None:
    config = ModelConfig(kind="tfidf-linear", params={"lead_sentences": 2, "min_df": 1, "calibration_cv": 2})
    fitted = kinds.build(config).fit(TEXTS, LABELS)
    served, form = kinds.for_serving(fitted, TEXTS[:6])
    assert form == "CalibratedLinearText" and isinstance(served, CalibratedLinearText) and served.lead == 2
    unseen = ["A drilling company. It sells oil.", "Software!", "no sentence end at all"]
    np.testing.assert_allclose(served.predict_proba(unseen), fitted.predict_proba(unseen), rtol=0, atol=1e-12)
    many = unseen * 4  # past the few rows scored without sparse matrices
    np.testing.assert_allclose(served.predict_proba(many), fitted.predict_proba(many), rtol=0, atol=1e-12)
    plain = kinds.build(ModelConfig(kind="tfidf-linear", params={"min_df": 1, "calibration_cv": 2}))
    reduced = CalibratedLinearText.from_pipeline(plain.fit(TEXTS, LABELS))
    assert reduced is not None and reduced.lead == 0  # without the setting, no lead block


def test_a_pipeline_holding_the_lead_step_loads_through_the_allowlist(registry: Path, tmp_path: Path) -> None:
    config = ModelConfig(kind="tfidf-linear", params={"lead_sentences": 2, "min_df": 1, "calibration_cv": 2})
    fitted = kinds.build(config).fit(TEXTS, LABELS)
    assert isinstance(fitted.named_steps["lead"], LeadSentences)
    version = planted(tmp_path, registry, model_bytes(fitted)[0])
    loaded, _ = load_model(version, trust())
    assert list(loaded.predict(TEXTS[:3])) == list(fitted.predict(TEXTS[:3]))
