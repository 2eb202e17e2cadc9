"""The model registry: ``models/<name>/<version>/``, versions that only grow, written atomically.

Layout::

    models/<name>/<version>/model.joblib     the pickled estimator
    models/<name>/<version>/manifest.json    what it is, how it was made, how well it does
    models/<name>/<version>/metrics.json     the evaluation report (and a confusion matrix, per-class table)

A version directory appears atomically (written under a temporary name, then renamed), so a crash
never leaves half an artifact, and an existing version is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from artifact.manifest import MODEL_FILE, ArtifactError, FileDigest
from artifact.trust import sha256_file


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
