"""The trust boundary around the models folder: whoever can write there must not reach code
execution, a signed lie, or an unbounded read. Every attack's payload is harmless: a command that
only creates a marker file, which must never appear."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from attacks import global_call, planted
from sklearn.feature_extraction.text import TfidfVectorizer

from artifact.manifest import ArtifactError
from artifact.registry import model_bytes
from artifact.trust import check_values, load_model, read_verified, trusted_manifest, unpickle
from controller.drivers import registry as controller_registry
from controller.errors import UsageError
from pipeline.cli import main as pipeline_main
from pipeline.config import load_config
from support import ROOT, trust

CONFIGS = ROOT / "pipeline" / "configs"


@pytest.mark.parametrize(
    ("module", "name", "args"),
    [
        # a dotted name walks attributes: joblib.numpy_pickle.os.system is os.system
        ("joblib", "numpy_pickle.os.system", ("touch {marker}",)),
        ("sklearn", "utils.os.system", ("touch {marker}",)),
        # loky's process spawner, inside an allowed package
        ("joblib.externals.loky.backend.fork_exec", "fork_exec", ("touch {marker}",)),
        # numpy.load with allow_pickle of a file planted beside the artifact
        ("numpy", "load", ("{planted}", None, True)),
        # joblib's legacy wrapper np.loads its filename with pickles allowed
        ("joblib.numpy_pickle_compat", "NDArrayWrapper", ("{planted}", "ndarray")),
        # builtins that run code
        ("builtins", "eval", ("__import__('os').system('touch {marker}')",)),
        ("builtins", "getattr", ("os", "system")),
    ],
)
def test_a_signed_pickle_cannot_reach_code_through_an_allowed_module(
    registry: Path, tmp_path: Path, module: str, name: str, args: tuple[object, ...]
) -> None:
    marker = tmp_path / "pwned"
    beside = tmp_path / "beside.npy"  # an unsigned pickle planted next to the artifact
    import pickle

    import testmodels

    beside.write_bytes(pickle.dumps(testmodels.Hostile(str(marker))))
    filled = tuple(a.format(marker=marker, planted=beside) if isinstance(a, str) else a for a in args)
    version = planted(tmp_path, registry, global_call(module, name, *filled))
    with pytest.raises(ArtifactError, match=r"not among the classes a Switchyard model is made of"):
        load_model(version, trust())
    assert not marker.exists()


def test_a_vectorizer_whose_preprocessor_is_a_function_is_refused(registry: Path, tmp_path: Path) -> None:
    """A function that the allowlist lets in (a reconstructor) planted as a callable parameter: the
    walk over the loaded model refuses it, so it is never called on a request's text."""
    import re

    vectorizer = TfidfVectorizer(preprocessor=re._compile)  # type: ignore[attr-defined]
    version = planted(tmp_path, registry, model_bytes(vectorizer)[0])
    with pytest.raises(ArtifactError, match=r"preprocessor is the function re\._compile"):
        load_model(version, trust())


def test_a_trusted_modules_functions_and_imports_are_not_let_in(registry: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for module, name in (("testmodels", "time"), ("testmodels", "Any"), ("testmodels", "zlib")):
        version = planted(tmp_path / name, registry, global_call(module, name, f"touch {marker}"))
        with pytest.raises(ArtifactError, match="not among the classes"):
            unpickle(read_verified(version, trust()), modules=("testmodels",))
    assert not marker.exists()


def test_every_model_kind_the_pipeline_trains_passes_the_value_walk(registry: Path) -> None:
    for name, version in (("sample", 1), ("sample", 2), ("company-size", 1)):
        model, _ = load_model(registry / name / str(version), trust())
        check_values(model, registry / name / str(version))  # refuses nothing a real model holds


# ------------------------------------------------------------------ signing what was built


def test_a_model_swapped_while_training_writes_is_not_published_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write into the models folder swaps the model file and the manifest in the
    moments between writing and signing: what is signed is the bytes the trainer built, and the
    published version is checked afterwards, so the swap is either overwritten or refused."""
    import artifact.registry
    import testmodels
    from support import signer

    marker = tmp_path / "pwned"
    hostile, _ = model_bytes(testmodels.Hostile(str(marker)))
    real_write = artifact.registry.write_private

    def write_then_swap(path: Path, data: bytes, mode: int) -> None:
        real_write(path, data, mode)
        if path.name == "model.joblib":
            path.write_bytes(hostile)  # the attacker is fast: right after the model is written
        if path.name == "manifest.json":
            path.write_bytes(path.read_bytes().replace(b'"accuracy": ', b'"accuracy": 0.99, "x": '))

    monkeypatch.setattr(artifact.registry, "write_private", write_then_swap)
    from pipeline.train import train

    with pytest.raises(ArtifactError):
        train(load_config(CONFIGS / "sample-rules.toml"), tmp_path / "models", signer())
    for version in (tmp_path / "models" / "sample").glob("[0-9]*"):
        with pytest.raises(ArtifactError):
            read_verified(version, trust())  # nothing published verifies
    assert not marker.exists()


def test_sign_never_creates_a_key_and_signs_only_a_consistent_artifact(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "1"
    shutil.copytree(registry / "sample" / "1", version)
    (version / "manifest.sig").unlink()
    absent = tmp_path / "keys" / "signing.key"
    assert pipeline_main(["sign", str(version), "--signing-key", str(absent), "--trusted-keys", str(tmp_path)]) == 1
    assert not absent.exists() and not list(tmp_path.glob("*.pub"))

    (version / "model.joblib").write_bytes(b"swapped")
    from support import KEYS

    key = str(KEYS / "signing.key")
    assert pipeline_main(["sign", str(version), "--signing-key", key]) == 1
    assert not (version / "manifest.sig").exists()


# ------------------------------------------------------------------ every decision reads a verified manifest


def test_a_manifest_edited_after_signing_drives_no_decision(registry: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(registry / "sample", models / "sample")
    path = models / "sample" / "2" / "manifest.json"
    path.write_text(path.read_text().replace('"macro_f1": ', '"macro_f1": 0.01, "was": ', 1))
    with pytest.raises(UsageError, match="does not match its signature"):
        controller_registry.manifest(models, "sample", 2, trust())
    assert controller_registry.manifest(models, "sample", 1, trust()).version == 1


# ------------------------------------------------------------------ bounded reads


@pytest.mark.parametrize("target", ["manifest.json", "manifest.sig", "model.joblib"])
def test_a_file_linked_to_an_endless_device_is_refused_at_once(registry: Path, tmp_path: Path, target: str) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    (version / target).unlink()
    (version / target).symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="symbolic link"):
        read_verified(version, trust())


def test_a_fifo_in_place_of_a_manifest_does_not_hang(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    (version / "manifest.json").unlink()
    os.mkfifo(version / "manifest.json")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            trusted_manifest(version, trust())
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "reading a FIFO hung"
    assert isinstance(outcome[0], ArtifactError) and "not a regular file" in str(outcome[0])


def test_a_model_file_larger_than_its_signed_size_is_refused_without_reading_it(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    with (version / "model.joblib").open("ab") as fh:
        fh.truncate(1 << 34)  # a sparse 16 GiB file: reading it whole would exhaust memory
    with pytest.raises(ArtifactError, match="more than the"):
        read_verified(version, trust())
