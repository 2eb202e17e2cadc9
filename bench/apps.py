"""Baseline servers for bench/serve.py, run under uvicorn exactly like the service.

- ``raw_app``: a raw ASGI app that answers a constant: the HTTP floor.
- ``naive_app``: what most model servers amount to: FastAPI, a pydantic body, a sync endpoint, one
  ``predict_proba`` per request.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
from fastapi import FastAPI
from pydantic import BaseModel

CONSTANT = b'{"predictions":[{"label":"Technology","scores":{}}],"model":{"name":"raw","version":0}}'


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(CONSTANT)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": CONSTANT})


class Instance(BaseModel):
    description: str


def naive_app() -> FastAPI:
    model = joblib.load(os.environ["BENCH_MODEL_FILE"])
    classes = [str(c) for c in model.classes_]
    app = FastAPI()

    @app.post("/predict")
    def predict(instance: Instance) -> dict[str, Any]:
        row = model.predict_proba([instance.description])[0]
        best = int(row.argmax())
        return {"predictions": [{"label": classes[best], "scores": dict(zip(classes, row.tolist(), strict=True))}]}

    return app
