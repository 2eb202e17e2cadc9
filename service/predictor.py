"""The protocol-agnostic data plane: validate instances against the manifest's input schema, run the
model, shape the answer. Nothing here knows about HTTP; errors carry their status for the HTTP layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from artifact.manifest import Manifest
from service.errors import Invalid

Row = str | tuple[float, ...]


@dataclass(slots=True)
class Limits:
    max_instances: int
    max_text_length: int


class Predictor:
    def __init__(self, model: Any, manifest: Manifest, limits: Limits) -> None:
        self.model = model
        self.manifest = manifest
        self.limits = limits
        self.fields = [(f.name, f.type) for f in manifest.input_schema.fields]
        self.is_text = manifest.input_schema.is_text
        self.classes = [str(c) for c in model.classes_]
        self.label_counts = [0] * len(self.classes)  # written by the model thread only
        self.shadow_counts = [0] * len(self.classes)  # the same, for copies of another instance's traffic
        self.model_json = orjson.dumps({"name": manifest.name, "version": manifest.version})

    # ---------------------------------------------------------------- validation (on the event loop)

    def parse(self, payload: Any) -> list[Row]:
        """A request body -> validated model rows. Raises :class:`Invalid` naming the field."""
        if not isinstance(payload, dict):
            raise Invalid('the body must be a JSON object: {"instances": [...]} or one instance')
        if "instances" in payload:
            instances = payload["instances"]
            if not isinstance(instances, list):
                raise Invalid("instances must be a list", field="instances")
            if not instances:
                raise Invalid("instances must not be empty", field="instances")
            if len(instances) > self.limits.max_instances:
                raise Invalid(
                    f"{len(instances)} instances, the limit is {self.limits.max_instances}", field="instances"
                )
            return [self._row(instance, f"instances[{i}]") for i, instance in enumerate(instances)]
        return [self._row(payload, None)]

    def _row(self, instance: Any, where: str | None) -> Row:
        if not isinstance(instance, dict):
            raise Invalid("each instance must be a JSON object", field=where)
        if self.is_text:
            return self._text(instance, self.fields[0][0], where)
        return tuple(self._number(instance, name, where) for name, _ in self.fields)

    def _text(self, instance: dict[str, Any], name: str, where: str | None) -> str:
        field = f"{where}.{name}" if where else name
        value = instance.get(name)
        if value is None:
            raise Invalid(f"{field}: field required", field=field)
        if not isinstance(value, str):
            raise Invalid(f"{field}: must be a string, got {type(value).__name__}", field=field)
        if not value.strip():
            raise Invalid(f"{field}: must not be empty or whitespace", field=field)
        if len(value) > self.limits.max_text_length:
            raise Invalid(f"{field}: {len(value)} characters, the limit is {self.limits.max_text_length}", field=field)
        return value

    def _number(self, instance: dict[str, Any], name: str, where: str | None) -> float:
        field = f"{where}.{name}" if where else name
        value = instance.get(name)
        if value is None:
            raise Invalid(f"{field}: field required", field=field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"{field}: must be a number, got {type(value).__name__}", field=field)
        if not math.isfinite(value):
            raise Invalid(f"{field}: must be a finite number", field=field)
        return float(value)

    # ---------------------------------------------------------------- in the model thread (off the loop)

    def probabilities(self, rows: list[Row]) -> list[list[float]]:
        """One model call for all rows (of any request, either protocol)."""
        features: Any = rows if self.is_text else np.array(rows, dtype=float)
        probabilities: list[list[float]] = self.model.predict_proba(features).tolist()
        return probabilities

    def _best(self, probabilities: list[list[float]], shadow: bool = False) -> list[int]:
        """Each row's predicted class, counted once here for the metrics, whichever protocol answers."""
        counts = self.shadow_counts if shadow else self.label_counts
        best = [max(range(len(row)), key=row.__getitem__) for row in probabilities]
        for column in best:
            counts[column] += 1
        return best

    def render(
        self,
        probabilities: list[list[float]],
        top_k: int | None,
        shadow: bool = False,
        answers: list[tuple[str, float]] | None = None,
    ) -> list[bytes]:
        """``/predict`` answers: each row serialised to JSON here, off the event loop; ``answers``, when
        given, gets each row's label and its score (for the prediction log)."""
        classes = self.classes
        out: list[bytes] = []
        for best, row in zip(self._best(probabilities, shadow), probabilities, strict=True):
            if answers is not None:
                answers.append((classes[best], row[best]))
            if top_k is None or top_k >= len(classes):
                scores = dict(zip(classes, row, strict=True))
            else:
                ranked = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:top_k]
                scores = {classes[i]: row[i] for i in ranked}
            out.append(orjson.dumps({"label": classes[best], "scores": scores}))
        return out

    def labelled(self, probabilities: list[list[float]]) -> tuple[list[str], list[list[float]]]:
        """Open Inference Protocol answers: each row's label, and the probabilities as they are."""
        classes = self.classes
        return [classes[best] for best in self._best(probabilities)], probabilities

    def predict(self, rows: list[Row], top_k: int | None = None) -> list[bytes]:
        """Both at once, for a caller that is not the batcher (the warm-up)."""
        return self.render(self.probabilities(rows), top_k)

    def response(self, predictions: list[bytes]) -> bytes:
        return b'{"predictions":[' + b",".join(predictions) + b'],"model":' + self.model_json + b"}"
