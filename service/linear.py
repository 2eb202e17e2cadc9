"""A calibrated linear text classifier reduced to what prediction needs.

After fitting, the pipeline turns a TF-IDF + ``CalibratedClassifierCV(LinearSVC, ensemble=False)``
pipeline into this: the fitted vectorizer, one weight matrix, and each class's sigmoid calibration
parameters. It computes the same probabilities as scikit-learn (the pipeline checks that on held-out
rows, batched and one by one, before using it) with one product and a few vector operations instead
of per-call input validation and one calibrator call per class; for a few rows it also skips
scikit-learn's sparse vectorizing, reproducing its float32 arithmetic exactly. A lone request waits
for exactly that. It lives in the service package so the service can unpickle it without training
code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SMALL = 4  # up to this many rows, the single-document path beats scikit-learn's vectorized transform


class CalibratedLinearText:
    def __init__(
        self,
        vectorizer: Any,
        coef: np.ndarray,
        intercept: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        classes: np.ndarray,
    ) -> None:
        self.vectorizer = vectorizer
        self.weights = np.ascontiguousarray(coef.T, dtype=np.float64)  # (features, columns)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.classes_ = np.asarray(classes)
        self._analyzer: Callable[[str], list[str]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_analyzer": None}  # rebuilt on first use, not pickled

    def _single_path(self) -> bool:
        """Whether the vectorizer is one the single-document path reproduces exactly."""
        v = self.vectorizer
        return (
            type(v).__name__ == "TfidfVectorizer"
            and v.norm == "l2"
            and v.use_idf
            and not v.binary
            and np.dtype(v.dtype) == np.float32
        )

    def _scores_one(self, text: str) -> np.ndarray:
        """One document's decision scores, computed as scikit-learn does (same float32 rounding, same
        order of summation in the l2 norm) without its per-call validation and sparse matrices."""
        if self._analyzer is None:
            self._analyzer = self.vectorizer.build_analyzer()
        vocabulary = self.vectorizer.vocabulary_
        counts: dict[int, int] = {}
        for term in self._analyzer(text):
            column = vocabulary.get(term)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        columns = np.array(sorted(counts), dtype=np.int64)
        values = np.array([counts[c] for c in columns], dtype=np.float32)
        if self.vectorizer.sublinear_tf:
            np.log(values, values)
            values += np.float32(1.0)
        values *= self.vectorizer.idf_[columns]
        norm = math.sqrt(float(np.cumsum((values * values).astype(np.float64))[-1])) if len(values) else 0.0
        weights = values.astype(np.float64) / norm if norm else values.astype(np.float64)
        return weights.astype(np.float32).astype(np.float64) @ self.weights[columns]

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> CalibratedLinearText | None:
        """The reduced form of a fitted ``Pipeline([("features", ...), ("clf", CalibratedClassifierCV)])``
        with sigmoid calibration and ``ensemble=False``; None for anything else."""
        clf = pipeline.named_steps.get("clf")
        calibrated = getattr(clf, "calibrated_classifiers_", None)
        if not calibrated or len(calibrated) != 1 or calibrated[0].method != "sigmoid":
            return None
        inner = calibrated[0]
        estimator = inner.estimator
        if not hasattr(estimator, "coef_") or list(estimator.classes_) != list(clf.classes_):
            return None
        a = np.array([c.a_ for c in inner.calibrators])
        b = np.array([c.b_ for c in inner.calibrators])
        return cls(pipeline.named_steps["features"], estimator.coef_, estimator.intercept_, a, b, clf.classes_)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) <= SMALL and self._single_path():
            scores = np.vstack([self._scores_one(t) for t in texts]) + self.intercept
        else:
            scores = self.vectorizer.transform(texts) @ self.weights + self.intercept
        calibrated = 1.0 / (1.0 + np.exp(self.a * scores + self.b))
        if len(self.classes_) == 2:  # one decision column: the positive class
            positive = calibrated[:, 0]
            return np.column_stack([1.0 - positive, positive])
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / len(self.classes_))
        return np.divide(calibrated, total, out=uniform, where=total != 0)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]
