"""The Open Inference Protocol (KServe / Triton "V2" REST) beside ``/predict``, as a pure ASGI handler.

    GET  /v2                                    server metadata
    GET  /v2/health/live | /v2/health/ready     {"live": true} / {"ready": true|false}, 200 or 503
    GET  /v2/models/{name}[/versions/{v}]       model metadata: inputs, outputs, the class labels
    GET  /v2/models/{name}[/versions/{v}]/ready {"name": ..., "ready": true|false}, 200 or 503
    POST /v2/models/{name}[/versions/{v}]/infer inference

Inputs follow the manifest's input schema: a text model takes one ``BYTES`` input named after its
text field (one string per row); a tabular model takes one input per numeric field (``FP32``,
``FP64`` or an integer type, one value per row). A single ``[rows, features]`` tensor is refused with
a 400 that names the inputs to send. Outputs: ``label`` (``BYTES``, one per row) and
``probabilities`` (``FP64``, ``[rows, classes]``, in the order the metadata's ``labels`` gives).

Triton's binary tensor extension is supported both ways: a request whose JSON part is followed by raw
tensor bytes (``Inference-Header-Content-Length``, inputs with ``binary_data_size``), and outputs
asked for as binary (``binary_data`` on an output, or ``binary_data_output`` on the request), which is
what ``tritonclient`` does by default. Rows go through the same validation, limits and micro-batcher
as ``/predict``: a request of 8 rows is 8 rows in a batch. Errors have the protocol's shape,
``{"error": "..."}``, with a 4xx for every client mistake; a name or version that is not the loaded
model's is a 404.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from service.errors import BadRequest, HttpError, Invalid, MethodNotAllowed, NotReady, ServiceError
from service.fastpath import read_body, respond, run_model
from service.runtime import ModelRuntime

JSON_TYPE = (b"content-type", b"application/json")
NUMBER_TYPES = {"FP32": "<f", "FP64": "<d", "INT8": "<b", "INT16": "<h", "INT32": "<i", "INT64": "<q"}
NUMBER_TYPES |= {"UINT8": "<B", "UINT16": "<H", "UINT32": "<I", "UINT64": "<Q"}
OUTPUTS = ("label", "probabilities")
RESERVED_PARAMETERS = frozenset({"binary_data_output"})


class V2Route:
    def __init__(self, app: Any, runtime: ModelRuntime, max_body_bytes: int, server_version: str) -> None:
        self.app = app
        self.runtime = runtime
        self.limit = max_body_bytes
        self.server_version = server_version
        manifest = runtime.manifest
        self.name, self.version = manifest.name, str(manifest.version)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path != "/v2" and not path.startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        try:
            status, headers, body = await self._route(scope, receive, path.rstrip("/").split("/")[2:])
        except ServiceError as exc:
            status, body = exc.status, orjson.dumps({"error": exc.message})
            headers = [JSON_TYPE, *((k.lower().encode(), v.encode()) for k, v in exc.headers.items())]
        await respond(send, status, headers, body)

    async def _route(self, scope: dict[str, Any], receive: Any, parts: list[str]) -> tuple[int, list[Any], bytes]:
        method = scope["method"]
        if parts[:1] == ["models"] and len(parts) >= 2:
            rest = parts[2:]
            version = None
            if rest[:1] == ["versions"]:
                if len(rest) < 2:
                    raise HttpError(404, "no such endpoint: /v2/models/{name}/versions/{version}[/ready|/infer]")
                version, rest = rest[1], rest[2:]
            if rest in ([], ["ready"], ["infer"]):
                self._expect(method, "POST" if rest == ["infer"] else "GET")
                self._is_ours(parts[1], version)
                if rest == ["infer"]:
                    return await self._infer(scope, receive)
                if rest == ["ready"]:
                    ready = self.runtime.predictor is not None
                    return self._json({"name": self.name, "ready": ready}, 200 if ready else 503)
                return self._json(self._model_metadata())
        elif parts in ([], ["health", "live"], ["health", "ready"]):
            self._expect(method, "GET")
            if not parts:
                return self._json({"name": "switchyard", "version": self.server_version, "extensions": []})
            if parts[1] == "live":
                return self._json({"live": True})
            ready = self.runtime.predictor is not None
            return self._json({"ready": ready}, 200 if ready else 503)
        raise HttpError(404, f"no such endpoint: /v2/{'/'.join(parts)}")

    @staticmethod
    def _json(data: Any, status: int = 200) -> tuple[int, list[Any], bytes]:
        return status, [JSON_TYPE], orjson.dumps(data)

    @staticmethod
    def _expect(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowed(f"only {allowed} is allowed here", headers={"Allow": allowed})

    def _is_ours(self, name: str, version: str | None) -> None:
        if name != self.name or (version is not None and version != self.version):
            asked = f"{name!r}" + (f" version {version}" if version is not None else "")
            raise HttpError(
                404, f"model {asked} is not served here; this instance serves {self.name!r} version {self.version}"
            )

    def _model_metadata(self) -> dict[str, Any]:
        manifest = self.runtime.manifest
        labels = self.runtime.predictor.classes if self.runtime.predictor else manifest.labels
        if manifest.input_schema.is_text:
            inputs = [{"name": manifest.input_schema.fields[0].name, "datatype": "BYTES", "shape": [-1]}]
        else:
            inputs = [{"name": f.name, "datatype": "FP64", "shape": [-1]} for f in manifest.input_schema.fields]
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"switchyard/{manifest.model.get('kind', 'model')}",
            "inputs": inputs,
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(labels)]},
            ],
            "parameters": {"labels": list(labels)},
        }

    # ------------------------------------------------------------------ inference

    async def _infer(self, scope: dict[str, Any], receive: Any) -> tuple[int, list[Any], bytes]:
        predictor, batcher = self.runtime.predictor, self.runtime.batcher
        if predictor is None or batcher is None:
            raise NotReady("the model is still loading", headers={"Retry-After": "1"})
        body = await read_body(scope, receive, self.limit)
        request, binary = _split(body, _header(scope, b"inference-header-content-length"))
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest("inputs must be a non-empty list of tensors")
        columns = self._columns(inputs, binary)
        instances = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        rows = predictor.parse({"instances": instances})
        scope["switchyard.batch_size"] = len(rows)
        wanted = _wanted_outputs(request)
        labels, probabilities = await run_model(batcher, rows, predictor.labelled)
        return _response(request, self.name, self.version, wanted, labels, probabilities)

    def _columns(self, inputs: list[Any], binary: bytes) -> dict[str, list[Any]]:
        """Each expected input's values, one per row, decoded from JSON data or the binary part."""
        schema = self.runtime.manifest.input_schema
        expected = [f.name for f in schema.fields]
        given: dict[str, list[Any]] = {}
        offset = 0
        for tensor in inputs:
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise BadRequest("each input must be an object with a name, datatype, shape and data")
            name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
            if name not in expected:
                if not schema.is_text and isinstance(shape, list) and len(shape) == 2 and shape[1] == len(expected):
                    raise BadRequest(
                        f"input {name!r} looks like a [rows, features] tensor; send one input per field: "
                        f"{', '.join(expected)}"
                    )
                raise BadRequest(f"unknown input {name!r}; this model takes: {', '.join(expected)}")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise BadRequest(f"input {name!r}: shape must be [rows] or [rows, 1], got {shape}")
            limit = self.runtime.settings.max_instances
            if shape[0] > limit:  # checked on the declared shape, before a byte of data is decoded
                raise Invalid(f"input {name!r}: {shape[0]} rows, the limit is {limit}", field="instances")
            want = "BYTES" if schema.is_text else "a number type (FP32, FP64, INT...)"
            if (datatype == "BYTES") != schema.is_text or (not schema.is_text and datatype not in NUMBER_TYPES):
                raise BadRequest(f"input {name!r}: datatype must be {want}, got {datatype!r}")
            size = _binary_size(tensor)
            if size is None:
                values = tensor.get("data")
                if not isinstance(values, list):
                    raise BadRequest(f"input {name!r}: data must be a list (or binary, with binary_data_size)")
                values = _flat(values)
            else:
                if offset + size > len(binary):
                    raise BadRequest(f"input {name!r}: binary_data_size {size} runs past the end of the body")
                values = _decode(name, str(datatype), binary[offset : offset + size], shape[0])
                offset += size
            if len(values) != shape[0]:
                raise BadRequest(f"input {name!r}: shape {shape} holds {shape[0]} values, data has {len(values)}")
            given[name] = values
        missing = [name for name in expected if name not in given]
        if missing:
            raise BadRequest(f"missing input(s): {', '.join(missing)}")
        if len({len(v) for v in given.values()}) > 1:
            raise BadRequest("every input must have the same number of rows")
        return {name: given[name] for name in expected}


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def _split(body: bytes, header_length: bytes | None) -> tuple[dict[str, Any], bytes]:
    """The JSON part of a request and the binary part after it."""
    length = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest("Inference-Header-Content-Length must be the length of the JSON part of the body")
        length = int(header_length)
    try:
        request = orjson.loads(body[:length])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest('the body must be a JSON object: {"inputs": [...]}')
    return request, body[length:]


def _binary_size(tensor: dict[str, Any]) -> int | None:
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BadRequest(f"input {tensor['name']!r}: binary_data_size must be a non-negative integer")
    return size


def _flat(values: list[Any]) -> list[Any]:
    """Row-major data, flat or nested one level (``[[v], [v]]`` for a [rows, 1] tensor)."""
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]


def _decode(name: str, datatype: str, raw: bytes, rows: int) -> list[Any]:
    """The values of a binary tensor declared to hold ``rows`` of them: decoding stops, refused, at
    the first value past that, so a small body cannot cost more than its declared (limited) rows."""
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then the bytes
        values: list[Any] = []
        at = 0
        while at < len(raw):
            if len(values) == rows:
                raise BadRequest(f"input {name!r}: the binary data holds more than the {rows} values of its shape")
            if at + 4 > len(raw):
                raise BadRequest(f"input {name!r}: truncated BYTES element")
            (size,) = struct.unpack_from("<I", raw, at)
            chunk = raw[at + 4 : at + 4 + size]
            if len(chunk) != size:
                raise BadRequest(f"input {name!r}: truncated BYTES element")
            try:
                values.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                raise Invalid(f"input {name!r}: element {len(values)} is not UTF-8 text") from None
            at += 4 + size
        return values
    fmt = NUMBER_TYPES[datatype]
    width = struct.calcsize(fmt)
    if len(raw) != rows * width:
        raise BadRequest(f"input {name!r}: {len(raw)} bytes is not the {rows} {datatype} values of its shape")
    return [v for (v,) in struct.iter_unpack(fmt, raw)]


def _wanted_outputs(request: dict[str, Any]) -> dict[str, bool]:
    """The outputs to return, each with whether it is wanted in binary."""
    parameters = request.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None:
        return dict.fromkeys(OUTPUTS, all_binary)
    if not isinstance(asked, list) or not asked:
        raise BadRequest('outputs must be a non-empty list of {"name": ...} objects')
    wanted: dict[str, bool] = {}
    for output in asked:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output {name!r}; this model gives: {', '.join(OUTPUTS)}")
        parameters = output.get("parameters")
        wanted[name] = bool(isinstance(parameters, dict) and parameters.get("binary_data")) or all_binary
    return wanted


def _response(
    request: dict[str, Any],
    name: str,
    version: str,
    wanted: dict[str, bool],
    labels: list[str],
    probabilities: list[list[float]],
) -> tuple[int, list[Any], bytes]:
    rows, classes = len(labels), len(probabilities[0]) if probabilities else 0
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        "label": ("BYTES", [rows], labels),
        "probabilities": ("FP64", [rows, classes], [p for row in probabilities for p in row]),
    }
    outputs: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for output, binary in wanted.items():
        datatype, shape, data = tensors[output]
        tensor: dict[str, Any] = {"name": output, "datatype": datatype, "shape": shape}
        if binary:
            encoded = _encode(datatype, data)
            tensor["parameters"] = {"binary_data_size": len(encoded)}
            raw.append(encoded)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    parameters = request.get("parameters")
    if isinstance(parameters, dict):
        echoed = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
        if echoed:
            answer["parameters"] = echoed
    header = orjson.dumps(answer)
    if not raw:
        return 200, [JSON_TYPE], header
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
    ]
    return 200, headers, header + b"".join(raw)


def _encode(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = [text.encode() for text in data]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return struct.pack(f"<{len(data)}d", *data)
