"""The Open Inference Protocol, spoken by a real protocol client (tritonclient) to a real service and
through each router: the answers are /predict's, row for row."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from artifact.manifest import read_manifest
from support import Release, ServiceProcess, predict

TEXTS = [
    "We explore for crude oil and natural gas and operate pipelines and refineries.",
    "A regional bank taking deposits and making commercial and consumer loans.",
    "We design semiconductors and sell software for data centers.",
    "A biotechnology company developing antibody therapies for cancer.",
    "We own and operate shopping malls and office buildings as a REIT.",
    "An electric utility generating and distributing power to homes.",
    "We make packaged foods and beverages sold in grocery stores.",
    "A maker of industrial machinery, engines and aircraft parts.",
]


@pytest.fixture(scope="module")
def text_service(registry: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(registry / "sample" / "2", "--max-instances", "16", "--max-body-bytes", "65536") as service:
        yield service.wait_ready()


@pytest.fixture(scope="module")
def tabular_service(registry: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(registry / "company-size" / "1") as service:
        yield service.wait_ready()


def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def infer_text(url: str, texts: list[str], *, binary: bool, version: str = "") -> tuple[list[str], np.ndarray]:
    tensor = triton.InferInput("description", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    result = client(url).infer("sample", [tensor], model_version=version, outputs=outputs, request_id="r-1")
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    assert result.get_response()["id"] == "r-1"
    return labels, result.as_numpy("probabilities")


def predicted(url: str, instances: list[dict[str, object]], labels: list[str]) -> tuple[list[str], np.ndarray]:
    body = predict(url, {"instances": instances}).json()["predictions"]
    return [p["label"] for p in body], np.array([[p["scores"][label] for label in labels] for p in body])


def test_health_and_metadata_speak_the_protocol(text_service: ServiceProcess) -> None:
    server = client(text_service.url)
    assert server.is_server_live() and server.is_server_ready()
    assert server.is_model_ready("sample") and server.is_model_ready("sample", "2")
    assert not server.is_model_ready("sample", "7") and not server.is_model_ready("other")
    for path, body in [("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})]:
        response = httpx.get(text_service.url + path)
        assert response.status_code == 200 and response.json() == body  # some clients read the body
    metadata = server.get_model_metadata("sample", "2")
    manifest = read_manifest(text_service.model)
    assert metadata["versions"] == ["2"] and metadata["parameters"]["labels"] == manifest.labels
    assert metadata["inputs"] == [{"name": "description", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    assert server.get_server_metadata()["name"] == "switchyard"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-tensors"])
def test_text_inference_equals_predict_row_for_row(text_service: ServiceProcess, binary: bool) -> None:
    labels = read_manifest(text_service.model).labels
    got_labels, got_scores = infer_text(text_service.url, TEXTS, binary=binary, version="2")
    want_labels, want_scores = predicted(text_service.url, [{"description": t} for t in TEXTS], labels)
    assert got_labels == want_labels
    assert got_scores.shape == (len(TEXTS), len(labels))
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-12)


def test_tritonclient_defaults_binary_outputs_with_no_outputs_named(text_service: ServiceProcess) -> None:
    tensor = triton.InferInput("description", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS[:2], dtype=object))  # binary by default
    result = client(text_service.url).infer("sample", [tensor])
    labels = [v.decode() for v in result.as_numpy("label").tolist()]
    assert labels == predicted(text_service.url, [{"description": t} for t in TEXTS[:2]], [])[0]


def test_tabular_inference_takes_one_numeric_input_per_field(tabular_service: ServiceProcess) -> None:
    manifest = read_manifest(tabular_service.model)
    rows = [g.input for g in manifest.golden[:6]]
    inputs = []
    for field in manifest.input_schema.fields:
        values = np.array([[row[field.name]] for row in rows], dtype=np.float64)
        tensor = triton.InferInput(field.name, [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(values, binary_data=field.name != manifest.input_schema.fields[0].name)
        inputs.append(tensor)
    result = client(tabular_service.url).infer(manifest.name, inputs)
    want_labels, want_scores = predicted(tabular_service.url, rows, manifest.labels)
    assert [v.decode() for v in result.as_numpy("label").tolist()] == want_labels
    np.testing.assert_allclose(result.as_numpy("probabilities"), want_scores, atol=1e-12)

    matrix = triton.InferInput("features", [len(rows), len(manifest.input_schema.fields)], "FP64")
    matrix.set_data_from_numpy(np.zeros((len(rows), len(manifest.input_schema.fields))), binary_data=False)
    with pytest.raises(InferenceServerException, match="send one input per field") as refused:
        client(tabular_service.url).infer(manifest.name, [matrix])
    assert refused.value.status() == "400"


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/models/other/infer", {"inputs": []}, 404, "is not served here"),
        ("/v2/models/sample/versions/9/infer", {"inputs": []}, 404, "this instance serves 'sample' version 2"),
        ("/v2/models/sample/infer", {"inputs": []}, 400, "inputs must be a non-empty list"),
        ("/v2/models/sample/infer", {"inputs": [{"name": "text"}]}, 400, "unknown input 'text'"),
        (
            "/v2/models/sample/infer",
            {"inputs": [{"name": "description", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
            400,
            "datatype must be BYTES",
        ),
        (
            "/v2/models/sample/infer",
            {"inputs": [{"name": "description", "datatype": "BYTES", "shape": [2], "data": ["a bank"]}]},
            400,
            "holds 2 values, data has 1",
        ),
        (
            "/v2/models/sample/infer",
            {"inputs": [{"name": "description", "datatype": "BYTES", "shape": [1], "data": [" "]}]},
            422,
            "must not be empty",
        ),
        (
            "/v2/models/sample/infer",
            {"inputs": [{"name": "description", "datatype": "BYTES", "shape": [20], "data": ["a bank"] * 20}]},
            422,
            "the limit is 16",
        ),
        (
            "/v2/models/sample/infer",
            {
                "inputs": [{"name": "description", "datatype": "BYTES", "shape": [1], "data": ["a bank"]}],
                "outputs": [{"name": "embedding"}],
            },
            400,
            "unknown output 'embedding'",
        ),
        ("/v2/models/sample/explain", {}, 404, "no such endpoint"),
    ],
)
def test_client_mistakes_get_a_4xx_in_the_protocols_error_shape(
    text_service: ServiceProcess, path: str, body: object, status: int, words: str
) -> None:
    response = httpx.post(text_service.url + path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_malformed_bodies_are_400_not_500(text_service: ServiceProcess) -> None:
    url = text_service.url + "/v2/models/sample/infer"
    assert httpx.post(url, content=b"{not json").status_code == 400
    header_past_end = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert header_past_end.status_code == 400 and "Inference-Header-Content-Length" in header_past_end.json()["error"]
    truncated = json.dumps(
        {"inputs": [{"name": "description", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}
    ).encode()
    response = httpx.post(
        url, content=truncated + b"\x05\x00", headers={"Inference-Header-Content-Length": str(len(truncated))}
    )
    assert response.status_code == 400 and "runs past the end" in response.json()["error"]
    assert httpx.get(url).status_code == 405


def binary_request(url: str, declared_rows: int, elements: int) -> httpx.Response:
    """A binary BYTES tensor of ``elements`` empty strings (4 bytes each) declared as ``declared_rows``."""
    data = b"\0\0\0\0" * elements
    tensor = {"name": "description", "datatype": "BYTES", "shape": [declared_rows]}
    header = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": len(data)}}]}).encode()
    return httpx.post(url, content=header + data, headers={"Inference-Header-Content-Length": str(len(header))})


def test_a_binary_tensor_over_the_row_limit_is_refused_before_it_is_decoded(text_service: ServiceProcess) -> None:
    url = text_service.url + "/v2/models/sample/infer"
    many = binary_request(url, 16_000, 16_000)  # 64 KB of rows, each a few bytes: under the body limit
    assert many.status_code == 422 and "16000 rows, the limit is 16" in many.json()["error"]
    lying = binary_request(url, 2, 16_000)  # a small declared shape, with far more data behind it
    assert lying.status_code == 400 and "more than the 2 values of its shape" in lying.json()["error"]
    assert httpx.get(text_service.url + "/v2/health/live").status_code == 200


ROUTERS = [
    pytest.param(
        "nginx",
        marks=pytest.mark.skipif(shutil.which("nginx") is None, reason="NGINX ABSENT: the nginx router did not run"),
    ),
    "builtin",
]


@pytest.mark.parametrize("router", ROUTERS)
def test_both_routers_pass_the_protocol_and_keep_the_version_header(models: Path, tmp_path: Path, router: str) -> None:
    release = Release(models, tmp_path / "run", router)
    try:
        release("up", "sample", "2")
        labels = read_manifest(models / "sample" / "2").labels
        got_labels, got_scores = infer_text(release.url, TEXTS, binary=True)
        want_labels, want_scores = predicted(release.url, [{"description": t} for t in TEXTS], labels)
        assert got_labels == want_labels
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-12)
        ready = httpx.get(release.url + "/v2/models/sample/versions/2/ready")
        assert ready.status_code == 200 and ready.headers["x-model-version"] == "sample/2"
        assert client(release.url).is_model_ready("sample", "2")
    finally:
        release("down", check=False)
