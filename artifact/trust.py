"""What makes an artifact safe to load, checked in this order before a byte of it is unpickled:

1. its manifest is signed by a trusted key (:mod:`artifact.signing`), so nobody changed it, nor the
   model file whose sha256 it records, since it was trained;
2. the folder it sits in is the name and version the manifest claims;
3. the model file matches the manifest's size and sha256;
4. it was built with a scikit-learn this runtime can unpickle.

:func:`read_verified` reads the manifest and the model file once and checks those bytes;
:func:`unpickle` loads exactly the bytes that were checked, with an unpickler that only lets in
classes from the modules a Switchyard model is made of (scikit-learn, numpy, scipy, joblib, the
artifact package, plus any the operator names), so a pickle that reaches for ``os`` or ``eval`` is
refused even if everything else was forged.
"""

from __future__ import annotations

import hashlib
import io
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact.manifest import ArtifactError, Manifest, Runtime, manifest_bytes, parse_manifest
from artifact.signing import Trust

# Modules whose classes a Switchyard model is made of (and their submodules); everything else in a
# pickle is refused. service.rules and service.linear are where older artifacts name their classes.
ALLOWED_MODULES = (
    "sklearn",
    "_loss",  # scikit-learn's Cython losses (HistGradientBoosting) pickle under this bare name
    "numpy",
    "scipy",
    "joblib",
    "artifact",
    "service.rules",
    "service.linear",
    "collections",
    "copyreg",
    "re",
    "_codecs",
)
DENIED_MODULES = ("numpy.f2py", "numpy.distutils", "numpy.testing", "sklearn.utils._testing")
ALLOWED_BUILTINS = frozenset(
    {
        "slice",
        "set",
        "frozenset",
        "complex",
        "range",
        "bytearray",
        "bytes",
        "dict",
        "list",
        "tuple",
        "int",
        "float",
        "str",
        "bool",
        "object",
    }
)


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


def model_path(version_dir: Path, manifest: Manifest) -> Path:
    path = version_dir / manifest.artifact.file
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    return path


def _trusted_manifest(version_dir: Path, trust: Trust) -> Manifest:
    data = manifest_bytes(version_dir)
    trust.check(version_dir, data)
    manifest = parse_manifest(data, version_dir / "manifest.json")
    claimed = f"{manifest.name}/{manifest.version}"
    found = f"{version_dir.parent.name}/{version_dir.name}"
    if claimed != found:
        raise ArtifactError(f"{version_dir}: the folder says {found}, the manifest says {claimed}: refusing it")
    return manifest


def verify(version_dir: Path, trust: Trust) -> Manifest:
    """Check the signature, the folder and the model file's size and sha256 (without loading it)."""
    manifest = _trusted_manifest(version_dir, trust)
    path = model_path(version_dir, manifest)
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


def read_verified(version_dir: Path, trust: Trust) -> Verified:
    manifest = _trusted_manifest(version_dir, trust)
    path = model_path(version_dir, manifest)
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


def _allowed(module: str, name: str, extra: tuple[str, ...]) -> bool:
    if module == "builtins":
        return name in ALLOWED_BUILTINS
    if any(module == m or module.startswith(m + ".") for m in DENIED_MODULES):
        return False
    return any(module == m or module.startswith(m + ".") for m in (*ALLOWED_MODULES, *extra))


def unpickle(verified: Verified, *, allow_version_mismatch: bool = False, modules: tuple[str, ...] = ()) -> Any:
    """Load the checked bytes (never the file again), letting in only the allowed modules' classes
    (``modules`` adds to them: a team's own model classes)."""
    from joblib.numpy_pickle import NumpyUnpickler, _validate_fileobject_and_memmap

    class AllowList(NumpyUnpickler):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            if not _allowed(module, name, modules):
                raise ArtifactError(
                    f"{verified.path} wants {module}.{name}, which is not among the classes a Switchyard "
                    "model is made of: refusing to unpickle it"
                )
            return super().find_class(module, name)

    check_runtime(verified.manifest, allow_mismatch=allow_version_mismatch)
    try:
        with _validate_fileobject_and_memmap(io.BytesIO(verified.payload), "", None) as (stream, _):
            return AllowList("", stream, ensure_native_byte_order=True).load()
    except ArtifactError:
        raise
    except Exception as exc:  # a verified pickle can still fail to import a class
        raise ArtifactError(f"cannot unpickle {verified.path}: {exc}") from exc


def load_model(version_dir: Path, trust: Trust, *, modules: tuple[str, ...] = ()) -> tuple[Any, Manifest]:
    """Verify, then unpickle. Never unpickles a file whose signature, folder or hash is wrong."""
    verified = read_verified(version_dir, trust)
    return unpickle(verified, modules=modules), verified.manifest
