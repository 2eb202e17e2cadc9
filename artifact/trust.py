"""What makes an artifact safe to load: its model file must match the manifest's size and sha256, and
it must have been built with a scikit-learn this runtime can unpickle.

Artifacts are pickles, and unpickling runs code. :func:`read_verified` reads the model file once,
checks those bytes, and :func:`unpickle` loads exactly the bytes that were checked, so the file is
hashed once and cannot change between the check and the load.
"""

from __future__ import annotations

import hashlib
import io
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact.manifest import ArtifactError, Manifest, Runtime, read_manifest


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


def _check_digest(path: Path, manifest: Manifest, size: int, actual: str) -> None:
    if size != manifest.artifact.size:
        raise ArtifactError(f"{path} has {size} bytes, the manifest says {manifest.artifact.size}: refusing to load it")
    if actual != manifest.artifact.sha256:
        raise ArtifactError(
            f"{path} sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.artifact.sha256[:12]}…: refusing to load it"
        )


def _model_path(version_dir: Path, manifest: Manifest) -> Path:
    path = version_dir / manifest.artifact.file
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    return path


def verify(version_dir: Path) -> Manifest:
    """Check the model file against the manifest's size and sha256 (without loading it)."""
    manifest = read_manifest(version_dir)
    path = _model_path(version_dir, manifest)
    size = path.stat().st_size
    if size != manifest.artifact.size:  # cheap, and spares hashing a file that cannot match
        _check_digest(path, manifest, size, "")
    _check_digest(path, manifest, size, sha256_file(path))
    return manifest


@dataclass(frozen=True)
class Verified:
    """A manifest and the model file's bytes, checked against it: what :func:`unpickle` loads."""

    manifest: Manifest
    path: Path
    payload: bytes


def read_verified(version_dir: Path) -> Verified:
    manifest = read_manifest(version_dir)
    path = _model_path(version_dir, manifest)
    payload = path.read_bytes()
    _check_digest(path, manifest, len(payload), hashlib.sha256(payload).hexdigest())
    return Verified(manifest, path, payload)


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


def unpickle(verified: Verified, *, allow_version_mismatch: bool = False) -> Any:
    """Load the checked bytes (never the file again)."""
    import joblib

    check_runtime(verified.manifest, allow_mismatch=allow_version_mismatch)
    try:
        return joblib.load(io.BytesIO(verified.payload))
    except Exception as exc:  # a verified pickle can still fail to import a class
        raise ArtifactError(f"cannot unpickle {verified.path}: {exc}") from exc


def load_model(version_dir: Path, *, allow_version_mismatch: bool = False) -> tuple[Any, Manifest]:
    """Verify, then unpickle. Never unpickles a file whose hash does not match its manifest."""
    verified = read_verified(version_dir)
    return unpickle(verified, allow_version_mismatch=allow_version_mismatch), verified.manifest
