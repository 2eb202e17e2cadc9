"""The artifact contract as the pipeline, the service and the controller rely on it: the format is
checked on reading, old artifacts keep loading, and what is unpickled is exactly what was checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import testmodels
from artifact.manifest import ArtifactError, read_manifest
from artifact.registry import model_bytes
from artifact.rules import KeywordRuleModel
from artifact.signing import SIGNATURE_FILE, Trust, create_key, load_private
from artifact.trust import load_model, read_verified, unpickle
from support import ROOT, ServiceProcess, artifact_with_model, clean_env, sign, trust, write_manifest


def test_a_manifest_from_a_newer_format_is_refused_by_name(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "1"
    shutil.copytree(registry / "sample" / "1", version)
    data = json.loads((version / "manifest.json").read_text())
    (version / "manifest.json").write_text(json.dumps(data | {"format_version": 99}))
    sign(version)  # as a newer Switchyard would have
    with pytest.raises(ArtifactError, match="format_version 99; this Switchyard reads format 1"):
        read_manifest(version)
    served = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(version)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert served.returncode == 3
    assert served.stderr.strip().splitlines()[-1].startswith("error: ") and "format_version 99" in served.stderr


def test_artifacts_pickled_under_the_old_module_paths_still_load(registry: Path, tmp_path: Path) -> None:
    model, _ = load_model(registry / "sample" / "1", trust())
    assert isinstance(model, KeywordRuleModel)
    KeywordRuleModel.__module__ = "service.rules"  # where the class lived when older artifacts were written
    try:
        old = artifact_with_model(registry / "sample" / "1", tmp_path, "sample", model)
    finally:
        KeywordRuleModel.__module__ = "artifact.rules"
    pickled = zlib.decompress((old / "model.joblib").read_bytes())  # joblib's compress=3 is zlib
    assert b"service.rules" in pickled and b"artifact.rules" not in pickled
    loaded, manifest = load_model(old, trust())
    assert isinstance(loaded, KeywordRuleModel)
    text = {"description": "A bank taking deposits and making loans"}
    assert list(loaded.predict([text["description"]])) == list(model.predict([text["description"]]))
    assert manifest.version == 1


def test_what_is_unpickled_is_the_bytes_that_were_checked(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    verified = read_verified(version, trust())
    (version / "model.joblib").write_bytes(b"not a pickle any more")  # changed after the check
    model = unpickle(verified)
    assert list(model.classes_) == verified.manifest.labels
    with pytest.raises(ArtifactError, match=r"does not match the manifest|bytes, the manifest says"):
        read_verified(version, trust())


# ------------------------------------------------------------------ trust: what is checked is what is trusted


def serve(version: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "--model", str(version), "--port", "0", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=120,
    )


def test_a_pickle_whose_hash_was_recomputed_is_refused_before_it_runs(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    marker = tmp_path / "pwned"
    payload, digest = model_bytes(testmodels.Hostile(str(marker)))  # both files rewritten, the hash recomputed
    (version / "model.joblib").write_bytes(payload)
    data = json.loads((version / "manifest.json").read_text())
    write_manifest(version, data | {"artifact": digest.model_dump()})
    served = serve(version)
    assert served.returncode == 3 and "does not match its signature" in served.stderr
    assert not marker.exists()

    # even signed by a trusted key, a pickle that reaches for os.system is refused by the unpickler
    sign(version)
    served = serve(version)
    assert served.returncode == 3 and "wants posix.system" in served.stderr and "refusing to unpickle" in served.stderr
    assert not marker.exists()


def test_unsigned_and_untrusted_artifacts_are_refused_by_name(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    (version / SIGNATURE_FILE).unlink()
    refused = serve(version)
    assert refused.returncode == 3 and "is not signed" in refused.stderr
    with pytest.raises(ArtifactError, match="is not signed"):
        read_verified(version, trust())

    other = tmp_path / "other-keys"
    create_key(other / "signing.key", other / "trusted")
    identity = sign(version, load_private(other / "signing.key"))
    refused = serve(version)
    assert refused.returncode == 3 and f"signed by key {identity}, which is not trusted" in refused.stderr

    (version / SIGNATURE_FILE).unlink()  # the loud opt-out for local experiments
    allowed = ServiceProcess(version, "--allow-unsigned")
    try:
        allowed.wait_ready()
        assert "WARNING: --allow-unsigned" in allowed.output()
    finally:
        allowed.stop()


def test_a_folder_that_is_not_the_manifests_name_and_version_is_refused(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "payroll" / "19"
    shutil.copytree(registry / "sample" / "2", version)
    with pytest.raises(ArtifactError, match="the folder says payroll/19, the manifest says sample/2"):
        read_verified(version, trust())


def test_training_creates_a_key_pair_on_first_use(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    command = [sys.executable, "-m", "pipeline", "train", "--config", "pipeline/configs/sample-rules.toml"]
    env = clean_env(SWITCHYARD_SIGNING_KEY=str(keys / "signing.key"), SWITCHYARD_TRUSTED_KEYS=str(keys / "trusted"))
    result = subprocess.run(
        [*command, "--models-dir", str(tmp_path / "models")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "created a signing key pair" in result.stderr
    assert (keys / "signing.key").stat().st_mode & 0o777 == 0o600
    assert read_verified(Path(result.stdout.strip()), Trust.from_folder(keys / "trusted")).manifest.version == 1


def test_labels_that_are_not_the_models_classes_are_refused(registry: Path, tmp_path: Path) -> None:
    inner, _ = load_model(registry / "sample" / "2", trust())
    mislabelled = artifact_with_model(registry / "sample" / "2", tmp_path, "sample", inner, labels=["Spam", "Eggs"])
    served = serve(mislabelled)
    assert served.returncode == 3
    assert "the manifest's labels ['Spam', 'Eggs'] are not the model's own classes" in served.stderr
