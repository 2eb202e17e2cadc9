"""The service's data plane in process: a client's mistake is a 422 naming the field, never a model
call; answers carry the label, the scores asked for and the model's identity; every answered row is
counted once for the metrics, live and shadow apart."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from artifact.manifest import FieldSpec, InputSchema, Manifest
from service.errors import Invalid
from service.predictor import Limits, Predictor


class Fixed:
    """A model that answers the same probabilities for every row, and remembers what it was given."""

    classes_ = np.array(["Energy", "Technology", "Utilities"])

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def predict_proba(self, rows: Any) -> np.ndarray:
        self.calls.append(rows)
        return np.tile([0.2, 0.7, 0.1], (len(rows), 1))


def predictor(*fields: tuple[str, str], max_instances: int = 3, max_text_length: int = 50) -> Predictor:
    schema = InputSchema(fields=[FieldSpec(name=name, type=kind) for name, kind in fields])  # type: ignore[arg-type]
    manifest = Manifest.model_construct(name="industry", version=4, input_schema=schema)
    return Predictor(Fixed(), manifest, Limits(max_instances, max_text_length))


TEXT = predictor(("description", "string"))
TABLE = predictor(("employees", "number"), ("revenue", "number"))


@pytest.mark.parametrize(
    ("model", "payload", "field", "words"),
    [
        (TEXT, [1, 2], None, "the body must be a JSON object"),
        (TEXT, {"instances": {}}, "instances", "instances must be a list"),
        (TEXT, {"instances": []}, "instances", "instances must not be empty"),
        (TEXT, {"instances": [{"description": "a"}] * 4}, "instances", "4 instances, the limit is 3"),
        (TEXT, {"instances": ["oil"]}, "instances[0]", "each instance must be a JSON object"),
        (TEXT, {}, "description", "description: field required"),
        (TEXT, {"description": 7}, "description", "must be a string, got int"),
        (TEXT, {"instances": [{"description": "ok"}, {"description": "  "}]}, "instances[1].description", "empty"),
        (TEXT, {"description": "x" * 51}, "description", "51 characters, the limit is 50"),
        (TABLE, {"employees": 3}, "revenue", "revenue: field required"),
        (TABLE, {"employees": True, "revenue": 1}, "employees", "must be a number, got bool"),
        (TABLE, {"employees": float("nan"), "revenue": 1}, "employees", "must be a finite number"),
    ],
)
def test_a_clients_mistake_is_a_422_naming_the_field(model: Predictor, payload: Any, field: str, words: str) -> None:
    with pytest.raises(Invalid) as refused:
        model.parse(payload)
    assert refused.value.status == 422 and refused.value.field == field and words in refused.value.message


def test_rows_are_parsed_from_one_instance_or_many() -> None:
    assert TEXT.parse({"description": "oil"}) == ["oil"]
    assert TEXT.parse({"instances": [{"description": "a"}, {"description": "b"}]}) == ["a", "b"]
    assert TABLE.parse({"employees": 3, "revenue": 2.5, "extra": "ignored"}) == [(3.0, 2.5)]


def test_an_answer_has_the_label_the_scores_asked_for_and_the_models_identity() -> None:
    model = predictor(("description", "string"))
    full, top1 = model.predict(["a"])[0], model.predict(["b"], top_k=1)[0]
    assert orjson.loads(full) == {"label": "Technology", "scores": {"Energy": 0.2, "Technology": 0.7, "Utilities": 0.1}}
    assert orjson.loads(top1) == {"label": "Technology", "scores": {"Technology": 0.7}}
    body = orjson.loads(model.response([full, top1]))
    assert body["model"] == {"name": "industry", "version": 4} and len(body["predictions"]) == 2


def test_every_answered_row_is_counted_once_live_and_shadow_apart() -> None:
    model = predictor(("employees", "number"), ("revenue", "number"))
    probabilities = model.probabilities([(1.0, 2.0), (3.0, 4.0)])
    assert isinstance(model.model.calls[0], np.ndarray) and model.model.calls[0].shape == (2, 2)
    model.render(probabilities, None)
    model.render(probabilities[:1], None, shadow=True)
    labels, scores = model.labelled(probabilities)  # the Open Inference Protocol's answer counts too
    assert labels == ["Technology", "Technology"] and scores == probabilities
    assert model.label_counts == [0, 4, 0] and model.shadow_counts == [0, 1, 0]
