"""Loading and checking a CSV dataset, and fingerprinting it for the manifest."""

from __future__ import annotations

import csv
import difflib
import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifact.manifest import DatasetFingerprint
from pipeline.config import DataConfig
from pipeline.errors import DataError

csv.field_size_limit(10_000_000)


@dataclass
class Dataset:
    """Model inputs (a list of texts, or a float matrix) and string labels, with their fingerprint."""

    inputs: list[str] | np.ndarray
    labels: list[str]
    fingerprint: DatasetFingerprint
    fields: list[str]  # the input field names, in order
    groups: list[str] | None = None  # each row's group (``split.group_column``), if the config has one
    sources: list[str] | None = None  # each row's file (its stem), when the data is several files

    def rows(self, indices: list[int] | np.ndarray) -> list[dict[str, object]]:
        """The inputs at ``indices`` as API instances (field name -> value)."""
        out: list[dict[str, object]] = []
        for i in indices:
            value = self.inputs[int(i)]
            if isinstance(value, str):
                out.append({self.fields[0]: value})
            else:
                out.append({f: float(v) for f, v in zip(self.fields, value, strict=True)})
        return out


def _column(header: list[str], name: str, path: Path) -> int:
    if name in header:
        return header.index(name)
    close = difflib.get_close_matches(name, header, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (columns: {', '.join(header)})"
    raise DataError(f"{path}: no column {name!r}{hint}")


def _bad_rows(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:5])
    return f"{len(rows)} row{'s' if len(rows) != 1 else ''} ({shown}{', …' if len(rows) > 5 else ''})"


def load_dataset(
    path: Path, config: DataConfig, *, need_two_classes: bool = True, group_column: str | None = None
) -> Dataset:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    content = path.read_bytes()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise DataError(f"{path} is empty")
    label_at = _column(header, config.label_column, path)
    fields = [config.text_column] if config.text_column else list(config.feature_columns or [])
    field_at = [_column(header, f, path) for f in fields]
    group_at = _column(header, group_column, path) if group_column else None

    labels: list[str] = []
    texts: list[str] = []
    numbers: list[list[float]] = []
    groups: list[str] = []
    bad_label: list[int] = []
    bad_input: list[int] = []
    bad_group: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        label = row[label_at].strip()
        if not label or label.lower() in ("nan", "null", "none"):
            bad_label.append(line_no)
        labels.append(label)
        if group_at is not None:
            group = row[group_at].strip()
            if not group:
                bad_group.append(line_no)
            groups.append(group)
        if config.text_column:
            value = row[field_at[0]].strip()
            if not any(ch.isalpha() for ch in value):
                bad_input.append(line_no)
            texts.append(value)
        else:
            try:
                vector = [float(row[i]) for i in field_at]
            except ValueError:
                vector = [math.nan]
            if not all(math.isfinite(v) for v in vector):
                bad_input.append(line_no)
            numbers.append(vector)

    if not labels:
        raise DataError(f"{path} has a header but no rows")
    if bad_label:
        raise DataError(f"{path}: column {config.label_column!r} is empty or NaN in {_bad_rows(bad_label)}")
    if bad_input:
        what = (
            f"column {config.text_column!r} is empty or not text"
            if config.text_column
            else "a feature column is missing, not a number, NaN or infinite"
        )
        raise DataError(f"{path}: {what} in {_bad_rows(bad_input)}")
    if bad_group:
        raise DataError(f"{path}: column {group_column!r} (split.group_column) is empty in {_bad_rows(bad_group)}")
    counts = Counter(labels)
    if need_two_classes and len(counts) < 2:
        raise DataError(f"{path}: column {config.label_column!r} has only one class ({labels[0]!r})")

    fingerprint = DatasetFingerprint(
        path=str(path),
        sha256=hashlib.sha256(content).hexdigest(),
        rows=len(labels),
        label_counts=dict(sorted(counts.items())),
    )
    inputs: list[str] | np.ndarray = texts if config.text_column else np.array(numbers, dtype=float)
    return Dataset(
        inputs=inputs, labels=labels, fingerprint=fingerprint, fields=fields, groups=groups if group_column else None
    )


def load_sources(paths: list[Path], config: DataConfig, *, group_column: str | None = None) -> Dataset:
    """One dataset from one CSV, or from several of the same label space (two description sources of
    the same companies): rows in file order, each knowing its file; fingerprinted as the whole."""
    if len(paths) == 1:
        return load_dataset(paths[0], config, group_column=group_column)
    parts = [load_dataset(path, config, need_two_classes=False, group_column=group_column) for path in paths]
    labels = [label for part in parts for label in part.labels]
    counts = Counter(labels)
    if len(counts) < 2:
        raise DataError(f"{', '.join(map(str, paths))}: column {config.label_column!r} has only one class")
    inputs: list[str] | np.ndarray
    if config.text_column:
        inputs = [text for part in parts for text in part.inputs]
    else:
        inputs = np.vstack([part.inputs for part in parts])
    digest = hashlib.sha256(b"".join(bytes.fromhex(part.fingerprint.sha256) for part in parts)).hexdigest()
    fingerprint = DatasetFingerprint(
        path=" + ".join(str(path) for path in paths),
        sha256=digest,
        rows=len(labels),
        label_counts=dict(sorted(counts.items())),
    )
    groups = [g for part in parts for g in part.groups or []] if group_column else None
    sources = [path.stem for path, part in zip(paths, parts, strict=True) for _ in part.labels]
    return Dataset(inputs, labels, fingerprint, parts[0].fields, groups=groups, sources=sources)
