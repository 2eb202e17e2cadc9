"""``manifest.json``: the schema every artifact carries, and reading it.

A manifest says what a version is (name, version, input schema, labels), how it was made (runtime,
dataset fingerprint, config, git revision), how well it does (metrics per evaluation set) and what it
answered at training time (golden rows). ``format_version`` is checked on reading: a manifest written
by a newer Switchyard, in a format this one does not know, is refused rather than half-understood.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from artifact.safeio import MAX_MANIFEST_BYTES, read_capped

MODEL_FILE = "model.joblib"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(Exception):
    """An artifact is missing, malformed, tampered with, or built for another runtime."""


class FieldSpec(BaseModel):
    name: str
    type: Literal["string", "number"]


class InputSchema(BaseModel):
    fields: list[FieldSpec]

    @property
    def is_text(self) -> bool:
        return len(self.fields) == 1 and self.fields[0].type == "string"


class FileDigest(BaseModel):
    file: str = MODEL_FILE
    sha256: str
    size: int


class Runtime(BaseModel):
    python: str
    sklearn: str
    numpy: str
    joblib: str


class DatasetFingerprint(BaseModel):
    path: str
    sha256: str
    rows: int
    label_counts: dict[str, int]


class GoldenRow(BaseModel):
    input: dict[str, Any]
    label: str  # the true label
    predicted: str  # what the model answered at training time: the smoke test expects the same


class Manifest(BaseModel):
    """Everything a service, a controller or a person needs to know about a version."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str
    version: int
    created_at: str
    artifact: FileDigest
    runtime: Runtime
    model: dict[str, Any]  # {"kind": ..., "params": {...}}
    input_schema: InputSchema
    labels: list[str]
    metric: str  # the metric the CD4ML gate compares, e.g. "macro_f1"
    metrics: dict[str, Any]  # {"holdout": {...}, "cv": {...} | None, "eval_sets": {name: {...}}}
    dataset: DatasetFingerprint
    eval_sets: dict[str, DatasetFingerprint] = Field(default_factory=dict)
    git_revision: str | None = None
    training_seconds: float
    golden: list[GoldenRow]
    search: dict[str, Any] | None = None
    reports: dict[str, str] = Field(default_factory=dict)  # report file name -> sha256, signed with the rest
    # what the training inputs looked like, for drift: {"length": [p01, p99]} of a text field's characters
    input_profile: dict[str, Any] | None = None


def read_manifest(version_dir: Path) -> Manifest:
    """A manifest read without checking its signature: for showing one (``pipeline compare``), never
    for a decision (that is :func:`artifact.trust.trusted_manifest`)."""
    if not version_dir.is_dir():
        raise ArtifactError(f"no artifact at {version_dir}: directory does not exist")
    try:
        data = read_capped(version_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ArtifactError(f"no {MANIFEST_FILE} in {version_dir}") from None
    except OSError as exc:
        raise ArtifactError(str(exc)) from None
    return parse_manifest(data, version_dir / MANIFEST_FILE)


def parse_manifest(data: bytes, path: Path) -> Manifest:
    """A manifest from its exact bytes (the ones a signature was checked over)."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    found = raw.get("format_version", FORMAT_VERSION) if isinstance(raw, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {found}; this Switchyard reads format {FORMAT_VERSION}: "
            "upgrade Switchyard to serve it"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{path} is not a valid manifest: {where}: {first['msg']}") from None
