"""The artifact format: one module that the pipeline writes with and the service and controller read with.

Layout of a registry (``models/`` by default)::

    models/<name>/<version>/model.joblib     the pickled estimator
    models/<name>/<version>/manifest.json    what it is, how it was made, how well it does
    models/<name>/<version>/metrics.json     the evaluation report (and a confusion matrix, per-class table)

Versions are integers that only grow. A version directory appears atomically (written under a
temporary name, then renamed), so a crash never leaves half an artifact, and an existing version is
never overwritten. Artifacts are pickles: :func:`load_model` verifies the sha256 and size recorded in
the manifest before unpickling anything.

This module imports no training code, so the service image stays slim.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    """``manifest.json``: everything a service, a controller or a person needs to know about a version."""

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


def runtime_versions() -> Runtime:
    import joblib
    import numpy
    import sklearn

    return Runtime(
        python=platform.python_version(),
        sklearn=sklearn.__version__,
        numpy=numpy.__version__,
        joblib=joblib.__version__,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST_FILE
    if not version_dir.is_dir():
        raise ArtifactError(f"no artifact at {version_dir}: directory does not exist")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no {MANIFEST_FILE} in {version_dir}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{path} is not a valid manifest: {where}: {first['msg']}") from None


def verify(version_dir: Path) -> Manifest:
    """Check the model file against the manifest's size and sha256; return the manifest."""
    manifest = read_manifest(version_dir)
    model_path = version_dir / manifest.artifact.file
    if not model_path.is_file():
        raise ArtifactError(f"{model_path} is missing")
    size = model_path.stat().st_size
    if size != manifest.artifact.size:
        raise ArtifactError(
            f"{model_path} has {size} bytes, the manifest says {manifest.artifact.size}: refusing to load it"
        )
    actual = sha256_file(model_path)
    if actual != manifest.artifact.sha256:
        raise ArtifactError(
            f"{model_path} sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.artifact.sha256[:12]}…: refusing to load it"
        )
    return manifest


def check_runtime(manifest: Manifest, *, allow_mismatch: bool = False) -> list[str]:
    """Refuse a scikit-learn major/minor mismatch (pickles are not portable across them).

    Returns warnings for differences that are tolerated (patch versions, other libraries).
    """
    running = runtime_versions()
    warnings: list[str] = []
    for lib in ("sklearn", "numpy", "joblib"):
        want, have = getattr(manifest.runtime, lib), getattr(running, lib)
        if want == have:
            continue
        same_minor = want.split(".")[:2] == have.split(".")[:2]
        if lib == "sklearn" and not same_minor and not allow_mismatch:
            raise ArtifactError(
                f"artifact was built with scikit-learn {want}, this runtime has {have}: "
                "refusing to unpickle across minor versions (set allow_version_mismatch to override)"
            )
        warnings.append(f"{lib} {want} in the manifest, {have} running")
    return warnings


def load_model(version_dir: Path, *, allow_version_mismatch: bool = False) -> tuple[Any, Manifest]:
    """Verify, then unpickle. Never unpickles a file whose hash does not match its manifest."""
    import joblib

    manifest = verify(version_dir)
    check_runtime(manifest, allow_mismatch=allow_version_mismatch)
    try:
        model = joblib.load(version_dir / manifest.artifact.file)
    except Exception as exc:  # a verified pickle can still fail to import a class
        raise ArtifactError(f"cannot unpickle {version_dir / manifest.artifact.file}: {exc}") from exc
    return model, manifest


# --------------------------------------------------------------------------------------------- registry


def list_versions(models_dir: Path, name: str) -> list[int]:
    root = models_dir / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def resolve(models_dir: Path, name: str, version: int | str) -> Path:
    """``models/<name>/<version>``; ``latest`` picks the highest version."""
    if str(version) == "latest":
        versions = list_versions(models_dir, name)
        if not versions:
            raise ArtifactError(f"no versions of {name!r} in {models_dir}")
        version = versions[-1]
    try:
        number = int(version)
    except ValueError:
        raise ArtifactError(f"version must be an integer or 'latest', got {version!r}") from None
    path = models_dir / name / str(number)
    if not path.is_dir():
        known = ", ".join(map(str, list_versions(models_dir, name))) or "none"
        raise ArtifactError(f"{name} version {number} not found in {models_dir} (known: {known})")
    return path


@contextlib.contextmanager
def _registry_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_version(
    models_dir: Path,
    name: str,
    fill: Callable[[Path, int], None],
) -> Path:
    """Create ``models/<name>/<next version>`` atomically.

    ``fill(tmp_dir, version)`` writes the files into a temporary directory; it is renamed into place
    only once it returns. Concurrent writers are serialised by a lock on the registry folder, and the
    rename refuses to replace an existing version even without it.
    """
    root = models_dir / name
    with _registry_lock(root):
        version = (list_versions(models_dir, name) or [0])[-1] + 1
        tmp = root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            fill(tmp, version)
            target = root / str(version)
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ArtifactError(f"{target} already exists; versions are never overwritten") from None
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def write_model_file(directory: Path, model: Any) -> FileDigest:
    import joblib

    path = directory / MODEL_FILE
    joblib.dump(model, path, compress=3)
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
    return FileDigest(sha256=sha256_file(path), size=path.stat().st_size)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
