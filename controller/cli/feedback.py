"""``release feedback`` and ``release quality``: the truth about predictions comes back, and each
version's live accuracy is read from it."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from controller.core import quality
from controller.drivers import predictions, registry
from controller.errors import Refused
from controller.run.deployment import Deployment
from controller.settings import ControllerSettings


def feedback(args: argparse.Namespace, settings: ControllerSettings, deployment: Deployment) -> int:
    if args.feedback_command == "token":
        print(predictions.token(settings))
        return 0
    pairs = predictions.read_csv(args.file)
    facts = deployment.store.load()
    live = facts.slot(facts.active)
    if live is None or facts.name is None:
        raise Refused("cannot import feedback: nothing is live here, so no label set to check against")
    known = set(registry.manifest(settings.models_dir, facts.name, live.version, settings.trust()).labels)
    stored = predictions.store(settings, pairs, known)
    late = f", {stored.late} for predictions the log had already dropped" if stored.late else ""
    print(f"feedback: stored {stored.stored} label(s) from {args.file} ({stored.replaced} replaced earlier ones{late})")
    return 0


def readings(settings: ControllerSettings, deployment: Deployment, hours: float | None) -> dict[str, Any]:
    since = time.time() - hours * 3600 if hours else 0.0
    alpha = settings.quality_alpha
    found = quality.read(predictions.quality(settings, since), alpha)
    facts = deployment.store.load()
    versions = [
        {**r.quality.__dict__, "accuracy": r.quality.accuracy, "interval": r.interval, "words": r.words(1 - alpha)}
        for r in found
    ]
    compared = None
    live, staged = facts.slot(facts.active), facts.slot(facts.staged)
    if live is not None and staged is not None:
        pair = quality.paired(
            predictions.paired(settings, (staged.version, staged.color), (live.version, live.color), since), alpha
        )
        compared = {
            "candidate": staged.version,
            "live": live.version,
            "pairs": pair.pairs,
            "difference": pair.difference,
            "interval": pair.interval,
            "words": pair.words(1 - alpha),
        }
    return {"confidence": 1 - alpha, "versions": versions, "paired": compared}


def print_quality(data: dict[str, Any]) -> None:
    if not data["versions"]:
        print("quality: no answers logged yet")
    for version in data["versions"]:
        print(f"quality: {version['words']}")
    if data["paired"]:
        paired = data["paired"]
        print(f"paired: v{paired['candidate']} against live v{paired['live']}: {paired['words']}")


def run(args: argparse.Namespace, settings: ControllerSettings, deployment: Deployment) -> int:
    data = readings(settings, deployment, args.hours)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_quality(data)
    return 0
