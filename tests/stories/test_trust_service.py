"""A hostile but signed artifact through a real service start: refused before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from attacks import global_call, planted

from support import ROOT, clean_env


def test_a_dotted_name_is_refused_by_a_real_service_start(registry: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    version = planted(tmp_path, registry, global_call("joblib", "numpy_pickle.os.system", f"touch {marker}"))
    served = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(version), "--port", "0"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert served.returncode == 3 and "numpy_pickle.os.system" in served.stderr
    assert not marker.exists()
