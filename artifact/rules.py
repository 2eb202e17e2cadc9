"""The keyword rule model: the "rule-based first release" that an ML model later replaces behind the same API.

It lives in the artifact package (not the pipeline) so that a service can unpickle it without
importing any training code. It follows the scikit-learn classifier protocol: ``fit``, ``predict``,
``predict_proba`` and ``classes_``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np


class KeywordRuleModel:
    """Scores each label by how many of its keywords occur (whole words, case-insensitive) in the text.

    A text with no keyword at all gets the default label with probability 1.
    """

    def __init__(self, rules: Mapping[str, str], default_label: str) -> None:
        self.rules = dict(rules)
        self.default_label = default_label

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> KeywordRuleModel:
        self.classes_ = np.array(sorted({*labels, *self.rules.values(), self.default_label}))
        index = {label: i for i, label in enumerate(self.classes_)}
        self._default = index[self.default_label]
        self._patterns = [
            (re.compile(rf"\b{re.escape(keyword.lower())}\b"), index[label]) for keyword, label in self.rules.items()
        ]
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        scores = np.zeros((len(texts), len(self.classes_)))
        for row, text in enumerate(texts):
            lowered = text.lower()
            for pattern, column in self._patterns:
                scores[row, column] += len(pattern.findall(lowered))
        empty = scores.sum(axis=1) == 0
        scores[empty, self._default] = 1.0
        return scores / scores.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]

    def get_params(self, deep: bool = True) -> dict[str, object]:
        return {"rules": self.rules, "default_label": self.default_label}

    def set_params(self, **params: object) -> KeywordRuleModel:
        for key, value in params.items():
            setattr(self, key, value)
        return self
