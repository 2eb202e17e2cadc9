"""OpenAPI pieces built from the manifest, so ``/docs`` shows this model's own fields and an example.

``/predict`` reads its body itself (faster than a pydantic model on the hot path), so its request
schema is declared here rather than inferred.
"""

from __future__ import annotations

from typing import Any

from artifact.manifest import Manifest
from service.errors import error_schema


def instance_schema(manifest: Manifest) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for field in manifest.input_schema.fields:
        if field.type == "string":
            properties[field.name] = {"type": "string", "minLength": 1, "pattern": r"\S"}
        else:
            properties[field.name] = {"type": "number"}
    return {"type": "object", "required": list(properties), "properties": properties}


def predict_spec(manifest: Manifest) -> dict[str, Any]:
    instance = instance_schema(manifest)
    example = manifest.golden[0].input if manifest.golden else {}
    labels = manifest.labels
    prediction = {
        "type": "object",
        "required": ["label", "scores"],
        "properties": {
            "label": {"type": "string", "enum": labels},
            "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }
    error = {"content": {"application/json": {"schema": error_schema()}}}
    return {
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "return only the k highest scores per prediction",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {
                                "type": "object",
                                "required": ["instances"],
                                "properties": {"instances": {"type": "array", "minItems": 1, "items": instance}},
                            },
                            instance,
                        ]
                    },
                    "examples": {
                        "batch": {"value": {"instances": [example]}},
                        "single": {"value": example},
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "one prediction per instance",
                "headers": {"X-Model-Version": {"schema": {"type": "string"}, "description": "name/version"}},
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["predictions", "model"],
                            "properties": {
                                "predictions": {"type": "array", "items": prediction},
                                "model": {
                                    "type": "object",
                                    "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
                                },
                            },
                        }
                    }
                },
            },
            "400": {"description": "malformed JSON", **error},
            "413": {"description": "body over the size limit", **error},
            "422": {"description": "an instance does not match the input schema", **error},
            "503": {"description": "not ready, or overloaded (see Retry-After)", **error},
        },
    }


def simple(description: str, *, not_ready: bool = False) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {200: {"description": description}}
    if not_ready:
        responses[503] = {
            "description": "not ready yet",
            "content": {"application/json": {"schema": error_schema()}},
        }
    return responses


def metadata(manifest: Manifest) -> dict[str, Any]:
    """What a client needs: no paths, no data, no golden rows."""

    def summary(block: dict[str, Any] | None) -> dict[str, Any] | None:
        if not block:
            return None
        return {k: block[k] for k in ("accuracy", "macro_f1", "rows", "folds") if k in block}

    metrics = manifest.metrics
    return {
        "name": manifest.name,
        "version": manifest.version,
        "created_at": manifest.created_at,
        "kind": manifest.model["kind"],
        "sha256": manifest.artifact.sha256,
        "metric": manifest.metric,
        "metrics": {
            "holdout": summary(metrics.get("holdout")),
            "cv": summary(metrics.get("cv")),
            "eval_sets": {name: summary(block) for name, block in metrics.get("eval_sets", {}).items()},
        },
        "labels": manifest.labels,
        "input_schema": manifest.input_schema.model_dump(),
    }
