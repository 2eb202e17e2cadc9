"""The model registry as the controller reads it: a version's folder and its verified manifest, or a
usage error that names what is missing (``sample version 9 not found in models (known: 1, 2)``) or
why the manifest is not trusted. Every decision (a gate, a deploy, adoption, a console page) reads
manifests here, so an edited claim in ``manifest.json`` never drives one."""

from __future__ import annotations

from pathlib import Path

from artifact.manifest import ArtifactError, Manifest
from artifact.registry import resolve
from artifact.signing import Trust
from artifact.trust import trusted_manifest
from controller.errors import UsageError


def version_dir(models_dir: Path, name: str, version: int | str) -> Path:
    """``models/<name>/<version>``; ``latest`` is the highest version."""
    try:
        return resolve(models_dir, name, version)
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None


def manifest(models_dir: Path, name: str, version: int | str, trust: Trust) -> Manifest:
    try:
        return trusted_manifest(version_dir(models_dir, name, version), trust)
    except ArtifactError as exc:
        raise UsageError(str(exc)) from None
