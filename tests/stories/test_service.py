"""The prediction service, against real uvicorn processes on free ports, as a client sees it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import testmodels
from artifact.manifest import read_manifest
from artifact.trust import load_model
from support import ServiceProcess, artifact_with_model, cpus_of, port_open, predict, sign, trust

ENERGY = "We explore for crude oil and natural gas and operate pipelines and refineries."


@pytest.fixture(scope="module")
def text_service(registry: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        registry / "sample" / "2", "--max-text-length", "2000", "--max-instances", "16", "--max-body-bytes", "65536"
    ) as service:
        yield service.wait_ready()


@pytest.fixture(scope="module")
def tabular_service(registry: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(registry / "company-size" / "1") as service:
        yield service.wait_ready()


def test_single_and_batch_predictions_match_the_model_in_process(text_service: ServiceProcess, registry: Path) -> None:
    model, manifest = load_model(registry / "sample" / "2", trust())
    texts = [row.input["description"] for row in manifest.golden[:10]]
    expected = model.predict_proba(texts)

    single = predict(text_service.url, {"description": texts[0]})
    assert single.status_code == 200
    assert single.headers["x-model-version"] == "sample/2"
    body = single.json()
    assert body["model"] == {"name": "sample", "version": 2}
    assert [p["label"] for p in body["predictions"]] == [manifest.golden[0].predicted]

    batch = predict(text_service.url, {"instances": [{"description": t} for t in texts]}).json()
    assert [p["label"] for p in batch["predictions"]] == [row.predicted for row in manifest.golden[:10]]
    for got, want in zip(batch["predictions"], expected, strict=True):
        assert [got["scores"][label] for label in manifest.labels] == pytest.approx(list(want), abs=1e-9)


def test_top_k_shortens_scores(text_service: ServiceProcess) -> None:
    body = predict(text_service.url, {"description": ENERGY}, params={"top_k": 2}).json()
    scores = body["predictions"][0]["scores"]
    assert len(scores) == 2 and body["predictions"][0]["label"] == "Energy" == max(scores, key=scores.get)


def test_tabular_model_takes_its_own_fields(tabular_service: ServiceProcess) -> None:
    row = {"revenue_musd": 5000.0, "employees": 25000, "operating_margin": 0.15, "years_listed": 25}
    response = predict(tabular_service.url, {"instances": [row]})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "large"


BAD_TEXT_INPUTS = [
    ("malformed-json", b'{"description": "oil', 400, "bad_request", None),
    ("not-an-object", b'["oil"]', 422, "invalid_input", None),
    ("wrong-type", b'{"description": 42}', 422, "invalid_input", "description"),
    ("missing-field", b'{"text": "oil"}', 422, "invalid_input", "description"),
    ("empty", b'{"description": ""}', 422, "invalid_input", "description"),
    ("whitespace", b'{"description": "  \\n\\t "}', 422, "invalid_input", "description"),
    ("too-long", json.dumps({"description": "oil " * 600}).encode(), 422, "invalid_input", "description"),
    ("instances-not-list", b'{"instances": {"description": "oil"}}', 422, "invalid_input", "instances"),
    ("instances-empty", b'{"instances": []}', 422, "invalid_input", "instances"),
    ("too-many", json.dumps({"instances": [{"description": "oil"}] * 17}).encode(), 422, "invalid_input", "instances"),
    (
        "bad-in-batch",
        b'{"instances": [{"description": "oil"}, {"description": null}]}',
        422,
        "invalid_input",
        "instances[1].description",
    ),
    ("body-too-large", json.dumps({"description": "x" * 70_000}).encode(), 413, "payload_too_large", None),
    ("empty-body", b"", 400, "bad_request", None),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"), [c[1:] for c in BAD_TEXT_INPUTS], ids=[c[0] for c in BAD_TEXT_INPUTS]
)
def test_bad_input_gets_a_clear_4xx(
    text_service: ServiceProcess, body: bytes, status: int, code: str, field: str | None
) -> None:
    response = httpx.post(
        text_service.url + "/predict", content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["field"] == field
    assert response.headers["x-model-version"] == "sample/2"
    assert predict(text_service.url, {"description": ENERGY}).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("query", "method", "path", "status", "code"),
    [
        ("top_k=0", "POST", "/predict", 422, "invalid_input"),
        ("top_k=abc", "POST", "/predict", 422, "invalid_input"),
        ("", "GET", "/predict", 405, "method_not_allowed"),
        ("", "GET", "/nowhere", 404, "not_found"),
        ("", "DELETE", "/metadata", 405, "method_not_allowed"),
    ],
)
def test_bad_routes_and_params_use_the_error_shape(
    text_service: ServiceProcess, query: str, method: str, path: str, status: int, code: str
) -> None:
    response = httpx.request(method, f"{text_service.url}{path}?{query}", json={"description": ENERGY})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_chunked_body_over_the_limit_is_413(text_service: ServiceProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"description": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(text_service.url + "/predict", content=chunks(), timeout=10)
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("row", "status"),
    [
        ('{"revenue_musd": NaN, "employees": 1, "operating_margin": 0.1, "years_listed": 3}', 400),
        ('{"revenue_musd": 1e999, "employees": 1, "operating_margin": 0.1, "years_listed": 3}', 400),
        ('{"revenue_musd": "12", "employees": 1, "operating_margin": 0.1, "years_listed": 3}', 422),
        ('{"revenue_musd": true, "employees": 1, "operating_margin": 0.1, "years_listed": 3}', 422),
        ('{"employees": 1, "operating_margin": 0.1, "years_listed": 3}', 422),
    ],
    ids=["nan", "inf", "string", "bool", "missing"],
)
def test_bad_features_get_a_4xx(tabular_service: ServiceProcess, row: str, status: int) -> None:
    response = httpx.post(tabular_service.url + "/predict", content=row.encode(), timeout=10)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] in ("bad_request", "invalid_input")


def test_request_id_is_echoed_and_generated(text_service: ServiceProcess) -> None:
    given = predict(text_service.url, {"description": ENERGY}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = httpx.get(text_service.url + "/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.headers["x-model-version"] == "sample/2"
    deadline = time.monotonic() + 5  # the access line is written just after the response is sent
    mine: list[dict[str, object]] = []
    while not mine and time.monotonic() < deadline:
        complete = text_service.output().split("\n")[:-1]  # the last piece may be a line being written
        mine = [json.loads(line) for line in complete if '"request_id":"abc-123"' in line]
        time.sleep(0.02)
    assert mine and mine[0]["route"] == "/predict" and mine[0]["status"] == 200
    assert mine[0]["model_version"] == "sample/2" and mine[0]["batch_size"] == 1 and mine[0]["latency_ms"] > 0


def test_feedback_is_off_without_a_log_and_a_token_and_a_planted_link_is_not_read(
    text_service: ServiceProcess, registry: Path, tmp_path: Path
) -> None:
    off = httpx.post(text_service.url + "/feedback", json={"request_id": "a", "label": "Energy"}, timeout=10)
    assert off.status_code == 404 and "feedback is not enabled" in off.json()["error"]["message"]
    (tmp_path / "secret").write_text("the operator's other secret")
    (tmp_path / "token").symlink_to(tmp_path / "secret")
    log, token = ["--prediction-log", str(tmp_path / "p.sqlite")], ["--feedback-token-file", str(tmp_path / "token")]
    with ServiceProcess(registry / "sample" / "2", *log, *token) as service:
        service.wait_ready()
        linked = httpx.post(
            service.url + "/feedback",
            json={"request_id": "a", "label": "Energy"},
            headers={"Authorization": "Bearer the operator's other secret"},
            timeout=10,
        )
    assert linked.status_code == 404 and "its token file cannot be read" in linked.json()["error"]["message"]


def test_metadata_health_and_openapi(text_service: ServiceProcess) -> None:
    assert httpx.get(text_service.url + "/healthz").json() == {"status": "ok", "pid": text_service.proc.pid}
    ready = httpx.get(text_service.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["version"] == 2 and len(ready["sha256"]) == 64
    meta = httpx.get(text_service.url + "/metadata").json()
    assert meta["name"] == "sample" and meta["version"] == 2 and len(meta["labels"]) == 11
    assert meta["input_schema"]["fields"] == [{"name": "description", "type": "string"}]
    assert meta["metrics"]["holdout"]["macro_f1"] > 0.5
    assert "golden" not in meta and "dataset" not in meta
    spec = httpx.get(text_service.url + "/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "batch" in body["examples"]
    assert httpx.get(text_service.url + "/docs").status_code == 200


def _metric(text: str, metric: str, **labels: str) -> float:
    for line in text.splitlines():
        named = line.startswith(metric + "{") or line.startswith(metric + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_what_was_sent(registry: Path) -> None:
    with ServiceProcess(registry / "sample" / "2") as service:
        service.wait_ready()
        for _ in range(3):
            predict(service.url, {"description": ENERGY})
        predict(service.url, {"description": ""})
        text = httpx.get(service.url + "/metrics").text
    assert _metric(text, "switchyard_requests_total", route="/predict", status="200") == 3
    assert _metric(text, "switchyard_requests_total", route="/predict", status="422") == 1
    assert _metric(text, "switchyard_request_duration_seconds_count", route="/predict", status="200") == 3
    assert _metric(text, "switchyard_request_duration_seconds_count", route="/predict", status="422") == 1
    assert _metric(text, "switchyard_predictions_total", label="Energy") == 3
    assert _metric(text, "switchyard_model_info", name="sample", version="2") == 1


def test_tampered_truncated_or_mislabelled_artifacts_are_refused_at_start(registry: Path, tmp_path: Path) -> None:
    cases = {}

    def copy(case: str) -> Path:
        path = tmp_path / case / "sample" / "2"
        shutil.copytree(registry / "sample" / "2", path)
        return path

    def rewrite_manifest(path: Path, change: Any) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        change(manifest)
        (path / "manifest.json").write_text(json.dumps(manifest))

    tampered = copy("tampered")
    data = bytearray((tampered / "model.joblib").read_bytes())
    data[100] ^= 0x01
    (tampered / "model.joblib").write_bytes(bytes(data))
    cases[tampered] = "does not match the manifest"

    truncated = copy("truncated")
    (truncated / "model.joblib").write_bytes((truncated / "model.joblib").read_bytes()[:-10])
    cases[truncated] = "the manifest says"

    edited = copy("edited")  # the manifest changed after it was signed
    rewrite_manifest(edited, lambda m: m["labels"].reverse())
    cases[edited] = "does not match its signature"

    wrong_hash = copy("wrong-hash")  # signed as it is: the signer's manifest itself is wrong
    rewrite_manifest(wrong_hash, lambda m: m["artifact"].update(sha256="0" * 64))
    sign(wrong_hash)
    cases[wrong_hash] = "does not match the manifest"

    old_sklearn = copy("old-sklearn")
    rewrite_manifest(old_sklearn, lambda m: m["runtime"].update(sklearn="0.24.2"))
    sign(old_sklearn)
    cases[old_sklearn] = "refusing to unpickle across minor versions"

    for path, message in cases.items():
        service = ServiceProcess(path)
        code = service.wait_exit()
        output = service.output().strip()
        service.stop()
        assert code == 3, output
        assert output.startswith("error: ") and message in output and len(output.splitlines()) == 1
        assert not port_open(service.port)


def test_readiness_stays_false_until_warm_up(registry: Path, tmp_path: Path) -> None:
    inner, _ = load_model(registry / "sample" / "2", trust())
    slow = artifact_with_model(registry / "sample" / "2", tmp_path, "slow", testmodels.SlowFirstCall(inner, 3.0))
    with ServiceProcess(slow) as service:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(service.url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        ready = httpx.get(service.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        early = predict(service.url, {"description": ENERGY})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        service.wait_ready()
        assert predict(service.url, {"description": ENERGY}).status_code == 200


def test_sigterm_drains_an_in_flight_request(registry: Path, tmp_path: Path) -> None:
    inner, _ = load_model(registry / "sample" / "2", trust())
    sleepy = artifact_with_model(registry / "sample" / "2", tmp_path, "sleepy", testmodels.Sleepy(inner, 1.5))
    with ServiceProcess(sleepy) as service:
        service.wait_ready()
        result: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: result.setdefault("r", predict(service.url, {"description": ENERGY})))
        worker.start()
        time.sleep(0.5)  # the request is inside the model call now
        service.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=20)
        assert result["r"].status_code == 200 and result["r"].json()["predictions"][0]["label"] == "Energy"
        assert service.wait_exit() == 0


def test_a_model_failure_is_a_500_for_that_request_only(registry: Path, tmp_path: Path) -> None:
    inner, _ = load_model(registry / "sample" / "2", trust())
    fragile = artifact_with_model(registry / "sample" / "2", tmp_path, "fragile", testmodels.Exploding(inner))
    with ServiceProcess(fragile) as service:
        service.wait_ready()
        texts = [f"{ENERGY} #{i}" for i in range(20)] + ["boom goes the model"]
        with ThreadPoolExecutor(21) as pool:
            responses = list(pool.map(lambda t: predict(service.url, {"description": t}), texts))
        assert [r.status_code for r in responses[:-1]] == [200] * 20
        assert responses[-1].status_code == 500
        assert responses[-1].json()["error"]["code"] == "model_error"
        assert predict(service.url, {"description": ENERGY}).status_code == 200
        assert "the model failed on a valid request" in service.output()


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(registry: Path, tmp_path: Path) -> None:
    inner, manifest = load_model(registry / "sample" / "2", trust())
    sleepy = artifact_with_model(registry / "sample" / "2", tmp_path, "sleepy", testmodels.Sleepy(inner, 0.2))
    texts = [row.input["description"] for row in read_manifest(sleepy).golden]
    expected = {row.input["description"]: row.predicted for row in manifest.golden}
    with ServiceProcess(sleepy) as service:
        service.wait_ready()
        with ThreadPoolExecutor(len(texts)) as pool:
            responses = list(pool.map(lambda t: predict(service.url, {"description": t}), texts))
        labels = [r.json()["predictions"][0]["label"] for r in responses]
        assert labels == [expected[t] for t in texts]
        calls = _metric(httpx.get(service.url + "/metrics").text, "switchyard_model_calls_total")
    assert calls < len(texts) / 2, f"{calls} model calls for {len(texts)} concurrent requests: no batching"


def test_a_cancelled_client_does_not_break_its_batch(registry: Path, tmp_path: Path) -> None:
    inner, _ = load_model(registry / "sample" / "2", trust())
    sleepy = artifact_with_model(registry / "sample" / "2", tmp_path, "sleepy", testmodels.Sleepy(inner, 0.5))
    with ServiceProcess(sleepy) as service:
        service.wait_ready()

        def impatient() -> str:
            try:
                predict(service.url, {"description": ENERGY}, timeout=0.1)
            except httpx.TimeoutException:
                return "gave up"
            return "answered"

        def patient() -> int:
            return predict(service.url, {"description": ENERGY}).status_code

        with ThreadPoolExecutor(12) as pool:
            quitters = [pool.submit(impatient) for _ in range(4)]
            stayers = [pool.submit(patient) for _ in range(8)]
            assert [f.result() for f in quitters] == ["gave up"] * 4
            assert [f.result() for f in stayers] == [200] * 8
        assert patient() == 200


def test_two_workers_serve_and_stop_cleanly(registry: Path) -> None:
    with ServiceProcess(registry / "sample" / "2", "--workers", "2") as service:
        service.wait_ready()
        # Each new connection is a new 4-tuple, which SO_REUSEPORT hashes to one worker's socket.
        pids = [httpx.get(service.url + "/healthz").json()["pid"] for _ in range(40)]
        assert len(set(pids)) == 2 and service.proc.pid not in pids
        assert min(pids.count(p) for p in set(pids)) >= 5, "connections should spread across workers"
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: predict(service.url, {"description": ENERGY}).status_code, range(40)))
        assert codes == [200] * 40
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait_exit() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning workers apart needs two CPUs")
def test_workers_are_pinned_one_cpu_each_unless_told_otherwise(registry: Path) -> None:
    allowed = os.sched_getaffinity(0)
    with ServiceProcess(registry / "sample" / "2", "--workers", "2") as service:
        service.wait_ready()
        pids = {httpx.get(service.url + "/healthz").json()["pid"] for _ in range(40)}
        assert len(pids) == 2
        pinned = [cpus_of(pid) for pid in pids]
        assert all(len(cpus) == 1 for cpus in pinned) and pinned[0] != pinned[1], pinned
        assert "runs on CPU" in service.output()
    last = max(allowed)
    with ServiceProcess(registry / "sample" / "2", "--cpu-affinity", str(last)) as service:
        service.wait_ready()
        assert cpus_of(service.proc.pid) == {last}
        assert predict(service.url, {"description": ENERGY}).status_code == 200
    with ServiceProcess(registry / "sample" / "2", "--cpu-affinity", "off") as service:
        service.wait_ready()
        assert cpus_of(service.proc.pid) == allowed


def test_bad_settings_are_one_line(registry: Path) -> None:
    service = ServiceProcess(registry / "sample" / "2", "--workers", "0")
    assert service.wait_exit() == 2
    out = service.output().strip()
    service.stop()
    assert out.startswith("error: setting workers='0'") and len(out.splitlines()) == 1
    service = ServiceProcess(registry / "sample" / "2", "--cpu-affinity", "4096")
    assert service.wait_exit() == 2
    out = service.output().strip()
    service.stop()
    assert out.startswith("error: setting cpu_affinity='4096': CPU 4096 is not one this process may use")
    assert len(out.splitlines()) == 1


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error(text_service: ServiceProcess) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{text_service.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_overload_is_shed_with_503_and_retry_after(registry: Path, tmp_path: Path) -> None:
    inner, _ = load_model(registry / "sample" / "2", trust())
    sleepy = artifact_with_model(registry / "sample" / "2", tmp_path, "sleepy", testmodels.Sleepy(inner, 0.5))
    with ServiceProcess(sleepy, "--max-queue-rows", "2", "--max-batch-size", "2") as service:
        service.wait_ready()
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: predict(service.url, {"description": ENERGY}), range(12)))
        shed = [r for r in responses if r.status_code == 503]
        assert shed, "a full queue must shed load"
        assert all(r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1" for r in shed)
        assert all(r.status_code in (200, 503) for r in responses)
        assert any(r.status_code == 200 for r in responses)
        assert predict(service.url, {"description": ENERGY}).status_code == 200  # and it recovers


def _http(sock: socket.socket, body: bytes) -> bytes:
    """One POST /predict on a raw connection, and the whole answer (head and body)."""
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_after_a_flip_a_router_connection_whose_request_is_on_its_way_still_gets_its_answer(
    registry: Path, tmp_path: Path
) -> None:
    path = tmp_path / "live.sock"
    body = json.dumps({"description": ENERGY}).encode()
    with ServiceProcess(registry / "sample" / "2", "--uds", str(path)) as service:
        service.wait_ready()
        served = socket.socket(socket.AF_UNIX)  # a pooled router connection, idle after an answer
        served.connect(str(path))
        assert _http(served, body).startswith(b"HTTP/1.1 200")
        fresh = socket.socket(socket.AF_UNIX)  # opened by the router just before the flip
        fresh.connect(str(path))
        deadline = time.monotonic() + 30
        while httpx.get(service.url + "/readyz").json()["router_connections"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        os.kill(service.proc.pid, signal.SIGUSR1)  # what the controller sends the old instance after a flip
        served.settimeout(30)
        assert served.recv(1) == b"", "the idle pooled connection was not closed"
        answer = _http(fresh, body)  # its request arrives after the signal
        assert answer.startswith(b"HTTP/1.1 200") and b"sample/2" in answer
        fresh.settimeout(30)
        assert fresh.recv(1) == b"", "the connection stayed open after its answer"
        served.close()
        fresh.close()
