"""A calibrated linear text classifier reduced to what prediction needs.

After fitting, the pipeline turns a TF-IDF + ``CalibratedClassifierCV(LinearSVC, ensemble=False)``
pipeline into this: the fitted vectorizer, one weight matrix, and each class's sigmoid calibration
parameters. It computes the same probabilities as scikit-learn (the pipeline checks that on held-out
rows before using it) with one sparse product and a few vector operations, instead of per-call input
validation and one calibrator call per class. It lives in the artifact package so the service can
unpickle it without training code.

Term counting is scikit-learn's with its per-term exception removed: for a fixed vocabulary,
``CountVectorizer`` looks every n-gram up in a ``try``/``except KeyError``, and most bigrams of a new
text are not in the vocabulary. Here the lookups are one ``map`` with a default and the counting is
vectorised over the whole batch, building the same matrix (same sorted indices, same float32 counts)
that then goes through the vectorizer's own TF-IDF step: a third less time per row in a batch of 32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import scipy.sparse as sp

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"\b\w\w+\b")
FEW_ROWS = 8  # up to this many rows, scores without sparse matrices: cheaper below it, measured
LEAD = "lead_"  # the lead block's word prefix: prose has no words that start so


def with_lead(text: str, sentences: int) -> str:
    """``text`` followed by the words of its first ``sentences`` sentences, each marked as such: one
    vectorizer then counts them twice, once as words of the description and once as words of its lead,
    which says what the company does (the rest is history and geography)."""
    lead = " ".join(_SENTENCE_END.split(text, maxsplit=sentences)[:sentences])
    return text + " " + " ".join(LEAD + word for word in _WORD.findall(lead))


class LeadSentences:
    """The training pipeline's first step when ``lead_sentences`` is set: :func:`with_lead` on every
    text. Stateless; it has scikit-learn's estimator interface, so that a pipeline holding it can be
    cloned for cross-validation, without importing scikit-learn here."""

    def __init__(self, sentences: int = 2) -> None:
        self.sentences = sentences

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"sentences": self.sentences}

    def set_params(self, **params: Any) -> LeadSentences:
        self.sentences = int(params.get("sentences", self.sentences))
        return self

    def fit(self, texts: Sequence[str], y: Any = None) -> LeadSentences:
        return self

    def transform(self, texts: Sequence[str]) -> list[str]:
        return [with_lead(text, self.sentences) for text in texts]

    def fit_transform(self, texts: Sequence[str], y: Any = None) -> list[str]:
        return self.transform(texts)


class CalibratedLinearText:
    def __init__(
        self,
        vectorizer: Any,
        coef: np.ndarray,
        intercept: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        classes: np.ndarray,
        lead: int = 0,
    ) -> None:
        self.vectorizer = vectorizer
        self.lead = lead  # the lead block's sentences (:func:`with_lead`); 0: none
        self.weights = np.ascontiguousarray(coef.T, dtype=np.float64)  # (features, columns)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.classes_ = np.asarray(classes)
        self._analyze: Callable[[str], list[str]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_analyze": None}  # a closure: rebuilt on first use, not pickled

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_analyze": None, "lead": 0, **state})  # versions before the lead block have none

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
        lead = pipeline.named_steps.get("lead")
        if lead is not None and not isinstance(lead, LeadSentences):
            return None
        sentences = lead.sentences if lead is not None else 0
        return cls(
            pipeline.named_steps["features"], estimator.coef_, estimator.intercept_, a, b, clf.classes_, sentences
        )

    def features(self, texts: Sequence[str]) -> Any:
        """The vectorizer's ``transform(texts)``, computed with exception-free counting where the
        vectorizer is scikit-learn's Count- or TfidfVectorizer; as the vectorizer computes it otherwise."""
        v = self.vectorizer
        if self.lead and not isinstance(texts, str):
            texts = [with_lead(text, self.lead) for text in texts]
        if type(v).__name__ not in ("CountVectorizer", "TfidfVectorizer") or isinstance(texts, str):
            return v.transform(texts)
        if self._analyze is None:
            self._analyze = v.build_analyzer()
        counts = count_terms(texts, self._analyze, v.vocabulary_, v.dtype)
        if v.binary:
            counts.data.fill(1)
        tfidf = getattr(v, "_tfidf", None)
        return tfidf.transform(counts, copy=False) if tfidf is not None else counts

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        few = len(texts) <= FEW_ROWS and not isinstance(texts, str) and self._tfidf_l2() is not None
        scores = (self._few_scores(texts) if few else self.features(texts) @ self.weights) + self.intercept
        calibrated = 1.0 / (1.0 + np.exp(self.a * scores + self.b))
        if len(self.classes_) == 2:  # one decision column: the positive class
            positive = calibrated[:, 0]
            return np.column_stack([1.0 - positive, positive])
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / len(self.classes_))
        return np.divide(calibrated, total, out=uniform, where=total != 0)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]

    def _tfidf_l2(self) -> Any:
        """The vectorizer's tf-idf step when :meth:`_few_scores` computes exactly what it does (a
        TfidfVectorizer with l2 or no norm), else None."""
        v = self.vectorizer
        tfidf = getattr(v, "_tfidf", None)
        if type(v).__name__ != "TfidfVectorizer" or tfidf is None or tfidf.norm not in ("l2", None):
            return None
        return tfidf

    def _few_scores(self, texts: Sequence[str]) -> np.ndarray:
        """The decision scores of a few rows without building sparse matrices (their set-up costs more
        than one row's arithmetic)."""
        scores = np.zeros((len(texts), self.weights.shape[1]))
        for row, text in enumerate(texts):
            columns, values = self.row_features(text)
            scores[row] = values.astype(np.float64) @ self.weights[columns]
        return scores

    def row_features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's tf-idf features as the columns and values of its CSR row: scikit-learn's steps,
        in its order and its float type, so that they are bit for bit the vectorizer's."""
        v, tfidf = self.vectorizer, self._tfidf_l2()
        if self._analyze is None:
            self._analyze = v.build_analyzer()
        lookup = v.vocabulary_.get
        counts: dict[int, int] = {}
        for column in map(lookup, self._analyze(with_lead(text, self.lead) if self.lead else text)):
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        columns = np.fromiter(sorted(counts), dtype=np.int64, count=len(counts))  # a CSR row's order
        values = np.fromiter(map(counts.__getitem__, columns.tolist()), dtype=v.dtype, count=len(counts))
        if v.binary:
            values.fill(1)
        if tfidf.sublinear_tf:
            np.log(values, values)
            values += 1.0
        if hasattr(tfidf, "idf_"):
            values *= tfidf.idf_[columns]
        if tfidf.norm == "l2" and len(values):  # sklearn's loop: squares in the data's type, summed in order in double
            total = float(np.cumsum((values * values).astype(np.float64))[-1])
            if total != 0.0:
                values[:] = values.astype(np.float64) / math.sqrt(total)
        return columns, values


def count_terms(
    texts: Sequence[str], analyze: Callable[[str], list[str]], vocabulary: dict[str, int], dtype: Any
) -> sp.csr_matrix:
    """Term counts as ``CountVectorizer._count_vocab`` builds them for a fixed vocabulary: one row per
    text, columns sorted within each row, out-of-vocabulary terms dropped."""
    lookup = vocabulary.get
    columns: list[int] = []
    ends = [0]
    for text in texts:
        columns.extend(map(lookup, analyze(text), repeat(-1)))
        ends.append(len(columns))
    found = np.array(columns, dtype=np.int64)
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(ends))
    known = found >= 0
    width = len(vocabulary)
    # One sort of (row, column) keys gives each row's distinct columns in order, with their counts.
    keys, counts = np.unique(rows[known] * width + found[known], return_counts=True)
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // width, minlength=len(texts)), out=indptr[1:])
    return sp.csr_matrix((counts, keys % width, indptr), shape=(len(texts), width), dtype=dtype)
