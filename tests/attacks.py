"""Hostile artifacts for the trust tests: pickles that call a global, and a signed artifact holding one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from support import sign, write_manifest


def _str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def global_call(module: str, name: str, *args: object) -> bytes:
    """A protocol-4 pickle that calls ``module.name(*args)``: STACK_GLOBAL, then REDUCE."""
    encoded = b""
    for arg in args:
        encoded += _str(arg) if isinstance(arg, str) else (b"N" if arg is None else (b"\x88" if arg else b"\x89"))
    tuple_op = {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(args)]
    return b"\x80\x04" + _str(module) + _str(name) + b"\x93" + encoded + tuple_op + b"R."


def planted(tmp_path: Path, registry: Path, payload: bytes) -> Path:
    """sample/2 with its model file replaced by ``payload``, the manifest's hash updated and signed
    with the trusted key: a signed artifact whose pickle is hostile (the worst case for the unpickler)."""
    version = tmp_path / "models" / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", version)
    (version / "model.joblib").write_bytes(payload)
    data = json.loads((version / "manifest.json").read_text())
    data["artifact"] = {"file": "model.joblib", "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    write_manifest(version, data)
    sign(version)
    return version
