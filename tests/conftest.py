from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import testmodels
from artifact.trust import load_model
from pipeline.config import load_config
from pipeline.train import train
from support import ROOT, SHARED_DATA, artifact_with_model, sign, signer, trust, write_manifest

for _key in [k for k in os.environ if k.startswith("SWITCHYARD_")]:
    del os.environ[_key]  # a developer's shell must not change what the tests see

CONFIGS = ROOT / "pipeline" / "configs"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with sample/1 (rules), sample/2 (tf-idf) and company-size/1 (tabular), trained for real."""
    models = tmp_path_factory.mktemp("models")
    for config in ("sample-rules", "sample", "tabular"):
        train(load_config(CONFIGS / f"{config}.toml"), models, signer())
    return models


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "russell3000_yahoo.csv").is_file():
        pytest.skip(f"REAL DATA ABSENT: {SHARED_DATA} not found; the real-data checks did not run")
    return SHARED_DATA


@pytest.fixture(scope="session")
def models(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample/1 rules, sample/2 tf-idf, plus broken candidates: 3 never ready, 4 fails the smoke test,
    5 has a wrong hash."""
    root = tmp_path_factory.mktemp("release-models")
    shutil.copytree(registry / "sample", root / "sample")
    source = root / "sample" / "2"
    inner, manifest = load_model(source, trust(), modules=("testmodels",))
    artifact_with_model(source, root, "sample", testmodels.SlowFirstCall(inner, 3600.0))
    wrong_golden = [
        g.model_copy(update={"predicted": "Utilities" if g.predicted != "Utilities" else "Energy"})
        for g in manifest.golden
    ]
    artifact_with_model(source, root, "sample", inner, golden=[g.model_dump() for g in wrong_golden])
    bad_hash = artifact_with_model(source, root, "sample", inner)
    data = json.loads((bad_hash / "manifest.json").read_text())
    data["artifact"]["sha256"] = "f" * 64
    write_manifest(bad_hash, data)
    sign(bad_hash)  # signed as it is: the model file, not the manifest, is what is wrong
    return root
