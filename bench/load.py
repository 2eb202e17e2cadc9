"""Load from a second process on loopback: wrk with a Lua script that rotates over request bodies,
and its output parsed into figures."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path


def lua_script(texts: list[str], model: str | None = None) -> Path:
    """A wrk script posting one text a request, rotating over ``texts``: to ``/predict``, or with
    ``model``, to the Open Inference Protocol's ``/v2/models/<model>/infer`` (one BYTES row)."""
    path = f"/v2/models/{model}/infer" if model else "/predict"

    def body(text: str) -> str:
        if model:
            return json.dumps({"inputs": [{"name": "description", "datatype": "BYTES", "shape": [1], "data": [text]}]})
        return json.dumps({"description": text})

    bodies = ",\n".join("[==[" + body(t) + "]==]" for t in texts)
    script = f"""
local bodies = {{ {bodies} }}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "{path}", nil, bodies[i])
end
"""
    file = Path(tempfile.mkstemp(suffix=".lua")[1])
    file.write_text(script)
    return file


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    threads = min(2, concurrency)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/predict",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not (p50 and p99 and total and rps):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    return {
        "rps": float(rps.group(1)),
        "p50": _ms(p50.group(1)),
        "p99": _ms(p99.group(1)),
        "requests": int(total.group(1)),
        "errors": errors,
    }
