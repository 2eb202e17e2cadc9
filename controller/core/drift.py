"""Drift: a live version's inputs and predictions against its training data, read from the prediction
log. An alert is something for a person (or a retrain policy) to look at, never a rollback.

Two readings per live version: the share of inputs whose length falls outside the training inputs'
1st to 99th percentile (about 2% when the inputs are like the training ones), alerted once its
confidence sequence is surely above ``max_outside``, however often it is read; and the total
variation distance between the predicted label mix and the training label mix, alerted above
``max_label_shift`` once ``min_answers`` answers are in.
"""

from __future__ import annotations

from dataclasses import dataclass

from artifact.predlog import Inputs
from controller.core.stats import proportion_cs


@dataclass(frozen=True)
class Drift:
    version: int
    answered: int
    outside: tuple[float, float] | None  # the share of inputs outside the training lengths, and its lower bound
    label_shift: float | None
    alerts: tuple[str, ...]

    def words(self) -> str:
        parts = []
        if self.outside is not None:
            parts.append(f"{self.outside[0]:.1%} of inputs outside the training lengths")
        if self.label_shift is not None:
            parts.append(f"label mix {self.label_shift:.2f} from training's")
        said = "; ".join(parts) or f"too few answers yet ({self.answered})"
        return f"v{self.version}: " + ("DRIFT: " + "; ".join(self.alerts) if self.alerts else said)


def read(
    version: int,
    found: Inputs,
    training_labels: dict[str, int],
    *,
    alpha: float,
    max_outside: float,
    max_label_shift: float,
    min_answers: int,
) -> Drift:
    alerts = []
    outside = None
    if found.measured:
        share = found.outside / found.measured
        low, _ = proportion_cs(found.outside, found.measured, alpha)
        outside = (share, low)
        if low > max_outside:
            alerts.append(f"{share:.1%} of inputs outside the training lengths (surely above {max_outside:.0%})")
    shift = None
    total = sum(training_labels.values())
    if found.answered >= min_answers and total:
        labels = set(training_labels) | set(found.labels)
        shift = 0.5 * sum(
            abs(found.labels.get(k, 0) / found.answered - training_labels.get(k, 0) / total) for k in labels
        )
        if shift > max_label_shift:
            alerts.append(f"the predicted label mix is {shift:.2f} from training's (above {max_label_shift:.2f})")
    return Drift(version, found.answered, outside, shift, tuple(alerts))
