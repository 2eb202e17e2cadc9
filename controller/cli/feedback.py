"""``release feedback`` and ``release quality``: the truth about predictions comes back, and each
version's live accuracy is read from it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from controller.cli import report
from controller.drivers import host, predictions, registry
from controller.errors import Refused, StateError, UsageError
from controller.run import live
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


def retrain(args: argparse.Namespace, settings: ControllerSettings, deployment: Deployment) -> int:
    """The training pipeline on the config's data plus this deployment's labelled live predictions, in a
    process of its own (the controller never imports the pipeline): a new signed version, which then
    goes through the same stage, shadow and judgement as any other."""
    try:
        with open(args.config, "rb") as fh:
            name = tomllib.load(fh).get("name")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read the training config {args.config}: {exc}") from None
    facts = deployment.store.load()
    if facts.name is not None and name != facts.name:
        raise UsageError(f"{args.config} trains {name!r}, but this deployment serves {facts.name!r}")
    if not predictions.path(settings).is_file():
        raise Refused(f"nothing to learn from yet: no prediction log in {settings.run_dir}")
    argv = [sys.executable, "-m", "pipeline", "train", "--config", str(args.config)]
    argv += ["--models-dir", str(settings.models_dir), "--feedback", str(predictions.path(settings))]
    if args.hours:
        argv += ["--feedback-hours", f"{args.hours:g}"]
    keys = {k: v for k, v in os.environ.items() if k in ("SWITCHYARD_SIGNING_KEY", "SWITCHYARD_TRUSTED_KEYS")}
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=host.child_env(**keys))
    if done.returncode != 0:
        return done.returncode
    version = Path(done.stdout.strip().splitlines()[-1]).name
    print(
        f"retrain: {name} v{version} is trained on the labelled live predictions too (its manifest names them); "
        f"`release stage {version}` releases it beside live, with shadow traffic and the paired comparison"
    )
    return 0


def readings(settings: ControllerSettings, deployment: Deployment, hours: float | None) -> dict[str, Any]:
    since = time.time() - hours * 3600 if hours else 0.0
    try:
        facts = deployment.store.load()
    except StateError as exc:  # status still reports what runs; the quality says why it is missing
        return live.unreadable(settings, str(exc))
    return live.report(settings, facts, since)


def print_quality(data: dict[str, Any]) -> None:
    if not data["versions"]:
        print("quality: no answers logged yet")
    report.print_quality(data)


def run(args: argparse.Namespace, settings: ControllerSettings, deployment: Deployment) -> int:
    data = readings(settings, deployment, args.hours)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_quality(data)
    return 0
