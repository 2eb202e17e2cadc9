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

from artifact.manifest import ArtifactError, read_manifest
from artifact.registry import write_json
from artifact.rules import KeywordRuleModel
from artifact.trust import load_model, read_verified, unpickle
from support import ROOT, artifact_with_model, clean_env


def test_a_manifest_from_a_newer_format_is_refused_by_name(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "1"
    shutil.copytree(registry / "sample" / "1", version)
    data = json.loads((version / "manifest.json").read_text())
    write_json(version / "manifest.json", data | {"format_version": 99})
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
    model, _ = load_model(registry / "sample" / "1")
    assert isinstance(model, KeywordRuleModel)
    KeywordRuleModel.__module__ = "service.rules"  # where the class lived when older artifacts were written
    try:
        old = artifact_with_model(registry / "sample" / "1", tmp_path, "sample", model)
    finally:
        KeywordRuleModel.__module__ = "artifact.rules"
    pickled = zlib.decompress((old / "model.joblib").read_bytes())  # joblib's compress=3 is zlib
    assert b"service.rules" in pickled and b"artifact.rules" not in pickled
    loaded, manifest = load_model(old)
    assert isinstance(loaded, KeywordRuleModel)
    text = {"description": "A bank taking deposits and making loans"}
    assert list(loaded.predict([text["description"]])) == list(model.predict([text["description"]]))
    assert manifest.version == 1


def test_what_is_unpickled_is_the_bytes_that_were_checked(registry: Path, tmp_path: Path) -> None:
    version = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    verified = read_verified(version)
    (version / "model.joblib").write_bytes(b"not a pickle any more")  # changed after the check
    model = unpickle(verified)
    assert list(model.classes_) == verified.manifest.labels
    with pytest.raises(ArtifactError, match=r"does not match the manifest|bytes, the manifest says"):
        read_verified(version)
