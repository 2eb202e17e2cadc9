"""Throwaway model classes for service tests. Services load them from this folder (on PYTHONPATH),
exactly as they load the rule model from the service package."""

from __future__ import annotations

import time
import zlib
from typing import Any


class Wrapped:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = inner.classes_

    def predict_proba(self, rows: Any) -> Any:
        return self.inner.predict_proba(rows)

    def predict(self, rows: Any) -> Any:
        return self.classes_[self.predict_proba(rows).argmax(axis=1)]


class SlowFirstCall(Wrapped):
    """The first call (the warm-up) takes ``delay`` seconds: readiness must wait for it."""

    def __init__(self, inner: Any, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay
        self.calls = 0

    def predict_proba(self, rows: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return super().predict_proba(rows)


class Sleepy(Wrapped):
    """Every call takes ``delay`` seconds once the warm-up is done: for draining and batching tests."""

    def __init__(self, inner: Any, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay
        self.warm = False

    def predict_proba(self, rows: Any) -> Any:
        if self.warm:
            time.sleep(self.delay)
        self.warm = True
        return super().predict_proba(rows)


class Exploding(Wrapped):
    """Raises on any text containing 'boom': an unexpected model failure on valid input."""

    def predict_proba(self, rows: Any) -> Any:
        if any("boom" in str(row) for row in rows):
            raise RuntimeError("kaboom")
        return super().predict_proba(rows)


class Hostile:
    """What an attacker would pickle: unpickling it runs a command (``touch marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


class OnUnseen(Wrapped):
    """Behaves only on the rows it was checked with (its golden rows), so that it passes a stage and
    misbehaves on live traffic: ``fail`` raises (on every ``fail_every``-th distinct input, or all),
    ``delay`` sleeps, ``label`` answers that class."""

    def __init__(
        self,
        inner: Any,
        known: list[str],
        *,
        fail: bool = False,
        fail_every: int = 1,
        delay: float = 0.0,
        label: str | None = None,
    ) -> None:
        super().__init__(inner)
        self.known = set(known)
        self.fail = fail
        self.fail_every = fail_every
        self.delay = delay
        self.label = label

    def predict_proba(self, rows: Any) -> Any:
        probabilities = super().predict_proba(rows)
        unseen = [i for i, row in enumerate(rows) if row not in self.known]
        if not unseen:
            return probabilities
        if self.fail and any(zlib.crc32(str(rows[i]).encode()) % self.fail_every == 0 for i in unseen):
            raise RuntimeError("a model that fails on live traffic")
        if self.delay:
            time.sleep(self.delay)
        if self.label is not None:
            column = list(self.classes_).index(self.label)
            for i in unseen:
                probabilities[i] = 0.0
                probabilities[i][column] = 1.0
        return probabilities
