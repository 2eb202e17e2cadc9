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
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from artifact.manifest import MANIFEST_FILE, ArtifactError, FileDigest, Manifest
from artifact.safeio import MAX_MANIFEST_BYTES, read_capped, write_private
from artifact.signing import SIGNATURE_FILE, Trust, key_id, signature_file
from artifact.trust import read_verified


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


def write_version(models_dir: Path, name: str, build: Callable[[int], dict[str, bytes]]) -> Path:
    """Create ``models/<name>/<next version>`` atomically from files made in memory.

    ``build(version)`` returns every file of the version as bytes (the model, the manifest and its
    signature among them): what was hashed and signed is what gets written, never a file read back.
    They are written into a private temporary folder (0700, each file created new, no link
    followed), which is renamed into place only once complete. Concurrent writers are serialised by
    a lock on the registry folder, and the rename refuses to replace an existing version.
    """
    root = models_dir / name
    with _registry_lock(root):
        version = (list_versions(models_dir, name) or [0])[-1] + 1
        files = build(version)
        tmp = root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        os.mkdir(tmp, 0o700)
        try:
            for file_name, data in files.items():
                write_private(tmp / file_name, data, 0o644)
            target = root / str(version)
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ArtifactError(f"{target} already exists; versions are never overwritten") from None
                raise
            os.chmod(target, 0o755)  # readable by the services, writable by nobody else
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def model_bytes(model: Any) -> tuple[bytes, FileDigest]:
    """The model pickled in memory (joblib, compressed), and its digest for the manifest."""
    import joblib

    out = io.BytesIO()
    joblib.dump(model, out, compress=3)
    data = out.getvalue()
    return data, FileDigest(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def publish(
    models_dir: Path,
    name: str,
    model: Any,
    manifest_for: Callable[[int, FileDigest], Manifest],
    signer: Ed25519PrivateKey,
    reports: dict[str, bytes] | None = None,
) -> tuple[Path, Manifest]:
    """Pickle, hash, describe and sign a model in memory, write it as the next version, then verify
    the published folder exactly as a service will before anyone is told it exists.

    ``manifest_for(version, digest)`` makes the manifest; the report files' sha256 are added to it,
    so the console can serve them knowing they are what was signed. Someone who can write into the
    models folder gets nothing signed that this process did not make: the signature is over the
    bytes built here, and the check afterwards fails if the published files are not those bytes.
    """
    payload, digest = model_bytes(model)
    reports = reports or {}
    built: list[tuple[Manifest, bytes]] = []

    def build(version: int) -> dict[str, bytes]:
        manifest = manifest_for(version, digest).model_copy(
            update={"reports": {n: hashlib.sha256(d).hexdigest() for n, d in reports.items()}}
        )
        data = json_bytes(manifest.model_dump(mode="json"))
        built.append((manifest, data))
        return {**reports, digest.file: payload, MANIFEST_FILE: data, SIGNATURE_FILE: signature_file(data, signer)}

    target = write_version(models_dir, name, build)
    manifest, data = built[-1]
    public = signer.public_key()
    verified = read_verified(target, Trust({key_id(public): public}, target))
    if verified.manifest != manifest or read_capped(target / MANIFEST_FILE, MAX_MANIFEST_BYTES) != data:
        raise ArtifactError(f"{target} changed while it was published: do not serve it, and check who writes there")
    return target, manifest


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode()
