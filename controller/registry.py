"""The model registry as the controller reads it: a version's folder and its manifest, or a usage
error that names what is missing (``sample version 9 not found in models (known: 1, 2)``)."""

from __future__ import annotations

from pathlib import Path

from artifact.manifest import ArtifactError, Manifest, read_manifest
from artifact.registry import resolve
from controller.errors import UsageError


def version_dir(models_dir: Path, name: str, version: int | str) -> Path:
    """``models/<name>/<version>``; ``latest`` is the highest version."""
    try:
        return resolve(models_dir, name, version)
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None


def manifest(models_dir: Path, name: str, version: int | str) -> Manifest:
    try:
        return read_manifest(version_dir(models_dir, name, version))
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None
