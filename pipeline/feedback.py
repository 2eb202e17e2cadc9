"""Training on what the product taught back: the labelled live predictions of a deployment's
prediction log (:mod:`artifact.predlog`) as extra training rows, beside the config's own data.

Each distinct input counts once, with its latest label (a correction overrides what came before);
with a group column, each input is a group of its own, so a row is never on both sides of a split.
What was used (rows, the time window, a fingerprint of the inputs and labels, the log's path) goes
into the manifest, signed with the rest, so a version says which feedback made it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from artifact import predlog
from artifact.manifest import DatasetFingerprint
from pipeline.config import DataConfig
from pipeline.data import Dataset
from pipeline.errors import DataError


def load(path: Path, config: DataConfig, *, hours: float | None = None) -> tuple[Dataset, dict[str, Any]]:
    if not config.text_column:
        raise DataError("training on feedback needs a text model: the log keeps tabular inputs as JSON")
    if not path.is_file() or path.is_symlink():
        raise DataError(f"no prediction log at {path} (a deployment's run dir holds predictions.sqlite)")
    since = time.time() - hours * 3600 if hours else 0.0
    try:
        conn = predlog.connect(path)
        try:
            rows = predlog.labelled(conn, since)
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        raise DataError(f"the prediction log {path} cannot be read: {exc}") from None
    if not rows:
        raise DataError(f"{path} holds no labelled predictions with their input{' in that window' if hours else ''}")
    texts = [text for text, _, _, _ in rows]
    labels = [label for _, label, _, _ in rows]
    digest = hashlib.sha256("".join(f"{d}\t{label}\n" for _, label, d, _ in rows).encode()).hexdigest()
    fingerprint = DatasetFingerprint(
        path=str(path), sha256=digest, rows=len(rows), label_counts=dict(sorted(Counter(labels).items()))
    )
    used = {
        "rows": len(rows),
        "from": rows[0][3],
        "to": rows[-1][3],
        "sha256": digest,
        "log": str(path),
    }
    groups = [f"feedback:{d[:16]}" for _, _, d, _ in rows]
    return Dataset(
        texts, labels, fingerprint, [config.text_column], groups=groups, sources=["feedback"] * len(rows)
    ), used


def combined(data: Dataset, extra: Dataset) -> Dataset:
    """The config's data with the feedback rows after it, fingerprinted as the whole."""
    labels = data.labels + extra.labels
    inputs: list[str] | np.ndarray = list(data.inputs) + list(extra.inputs)
    digest = hashlib.sha256(bytes.fromhex(data.fingerprint.sha256) + bytes.fromhex(extra.fingerprint.sha256))
    fingerprint = DatasetFingerprint(
        path=f"{data.fingerprint.path} + {extra.fingerprint.path}",
        sha256=digest.hexdigest(),
        rows=len(labels),
        label_counts=dict(sorted(Counter(labels).items())),
    )
    groups = (data.groups or []) + (extra.groups or []) if data.groups is not None else None
    sources = (data.sources or ["data"] * len(data.labels)) + (extra.sources or [])
    return Dataset(inputs, labels, fingerprint, data.fields, groups=groups, sources=sources)
