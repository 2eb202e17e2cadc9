"""The truth about live predictions, read for people: from the prediction log and the feedback
(:mod:`controller.drivers.predictions`), judged by the pure rules of :mod:`controller.core.quality`
and :mod:`controller.core.drift` against the versions' signed manifests."""

from __future__ import annotations

from typing import Any

from controller.core import drift, quality
from controller.core.facts import Facts
from controller.drivers import predictions, registry
from controller.errors import NeedsOperator, UsageError
from controller.settings import ControllerSettings


def report(settings: ControllerSettings, facts: Facts, since: float = 0.0) -> dict[str, Any]:
    """Each version's live accuracy since ``since``, the staged candidate against live on the same
    labelled requests, and the live version's drift: what ``quality``, ``status`` and the console show.
    A log that cannot be read (a read-only or full disk, a damaged file) is said, never a failure of
    the command that asked."""
    try:
        return _report(settings, facts, since)
    except (NeedsOperator, UsageError) as exc:
        return unreadable(settings, str(exc))


def unreadable(settings: ControllerSettings, problem: str) -> dict[str, Any]:
    """The report when the log (or the state that says which versions run) cannot be read."""
    empty = {"confidence": 1 - settings.quality_alpha, "versions": [], "paired": None, "drift": None}
    return empty | {"problem": problem}


def _report(settings: ControllerSettings, facts: Facts, since: float) -> dict[str, Any]:
    alpha = settings.quality_alpha
    found = quality.read(predictions.quality(settings, since), alpha)
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
    return {"confidence": 1 - alpha, "versions": versions, "paired": compared, "drift": _drift(settings, facts, since)}


def _drift(settings: ControllerSettings, facts: Facts, since: float) -> dict[str, Any] | None:
    """The live version's inputs and predictions against its training data (None before any answer)."""
    live = facts.slot(facts.active)
    if live is None or facts.name is None:
        return None
    manifest = registry.manifest(settings.models_dir, facts.name, live.version, settings.trust())
    profile = (manifest.input_profile or {}).get("length")
    found = predictions.inputs(settings, live.version, tuple(profile) if profile else None, since)
    if found is None or not found.answered:
        return None
    reading = drift.read(
        live.version,
        found,
        manifest.dataset.label_counts,
        alpha=settings.quality_alpha,
        max_outside=settings.drift_max_outside,
        max_label_shift=settings.drift_max_label_shift,
        min_answers=settings.drift_min_answers,
    )
    return {**reading.__dict__, "words": reading.words()}
