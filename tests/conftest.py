from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import ROOT, SHARED_DATA

from pipeline.config import load_config
from pipeline.train import train

for _key in [k for k in os.environ if k.startswith("SWITCHYARD_")]:
    del os.environ[_key]  # a developer's shell must not change what the tests see

CONFIGS = ROOT / "pipeline" / "configs"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with sample/1 (rules), sample/2 (tf-idf) and company-size/1 (tabular), trained for real."""
    models = tmp_path_factory.mktemp("models")
    for config in ("sample-rules", "sample", "tabular"):
        train(load_config(CONFIGS / f"{config}.toml"), models)
    return models


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "russell3000_yahoo.csv").is_file():
        pytest.skip(f"REAL DATA ABSENT: {SHARED_DATA} not found; the real-data checks did not run")
    return SHARED_DATA
