"""Each version's live quality from labelled predictions, with intervals that stay valid however often
they are read (``status``, the console and the agent read them continuously): confidence sequences
(:func:`controller.core.stats.proportion_cs`), not fixed-n intervals.

A champion and a challenger are compared on exactly the same labelled requests (the challenger's
shadow answers to copies of live ones): only the pairs where one is right and the other wrong tell
them apart. The difference in accuracy is ``r * (2q - 1)``, with ``r`` the share of such discordant
pairs and ``q`` the challenger's share of the wins among them; a confidence sequence for each at
half the error rate bounds it (a union bound: the pair holds at ``1 - alpha`` at every look).
"""

from __future__ import annotations

from dataclasses import dataclass

from artifact.predlog import Quality
from controller.core.stats import proportion_cs


@dataclass(frozen=True)
class Reading:
    quality: Quality
    interval: tuple[float, float] | None  # of the accuracy, None before any label

    def words(self, confidence: float) -> str:
        q = self.quality
        where = f"v{q.version} ({q.slot}{', shadow' if q.shadow else ''})"
        estimate = f"estimate from its scores {q.estimate:.3f} over {q.answered} answers"
        if q.accuracy is None or self.interval is None:
            return f"{where}: no labels yet; {estimate}"
        lo, hi = self.interval
        f1 = f", macro-F1 {q.macro_f1:.3f}" if q.macro_f1 is not None else ""
        return (
            f"{where}: accuracy {q.accuracy:.3f} [{lo:.3f}, {hi:.3f}] at {confidence:.0%} over {q.labelled} "
            f"labelled{f1}; {estimate}"
        )


def read(qualities: list[Quality], alpha: float) -> list[Reading]:
    return [Reading(q, proportion_cs(q.correct, q.labelled, alpha) if q.labelled else None) for q in qualities]


@dataclass(frozen=True)
class Paired:
    pairs: int
    challenger_only: int  # the challenger right, the champion wrong
    champion_only: int
    interval: tuple[float, float]  # of the accuracy difference, challenger minus champion

    @property
    def difference(self) -> float:
        return (self.challenger_only - self.champion_only) / self.pairs if self.pairs else 0.0

    def words(self, confidence: float) -> str:
        if not self.pairs:
            return "no labelled request was answered by both yet"
        lo, hi = self.interval
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "no difference shown yet"
        return (
            f"{self.difference:+.3f} accuracy [{lo:+.3f}, {hi:+.3f}] at {confidence:.0%} on {self.pairs} labelled "
            f"requests both answered ({self.challenger_only} only it got right, {self.champion_only} only live): "
            f"{verdict}"
        )


def gate(found: Paired, rule: str, margin: float, confidence: float) -> str | None:
    """Why a promote is refused on the labelled live requests (None: it passes). ``not-worse``: the
    candidate's accuracy is surely above live's minus ``margin``; ``better``: surely above live's."""
    if rule == "off":
        return None
    floor = -margin if rule == "not-worse" else 0.0
    if found.interval[0] > floor:
        return None
    want = f"better than live by more than {floor:+.3f}" if rule == "not-worse" else "better than live"
    return f"live labels do not show the candidate {want} at {confidence:.0%}: {found.words(confidence)}"


def paired(outcomes: list[tuple[bool, bool]], alpha: float) -> Paired:
    """``(challenger right, champion right)`` per labelled request -> the difference and its interval."""
    n = len(outcomes)
    wins = sum(new and not old for new, old in outcomes)
    losses = sum(old and not new for new, old in outcomes)
    if n == 0:
        return Paired(0, 0, 0, (-1.0, 1.0))
    r_lo, r_hi = proportion_cs(wins + losses, n, alpha / 2)
    q_lo, q_hi = proportion_cs(wins, wins + losses, alpha / 2) if wins + losses else (0.0, 1.0)
    lo = min(r * (2 * q_lo - 1) for r in (r_lo, r_hi))
    hi = max(r * (2 * q_hi - 1) for r in (r_lo, r_hi))
    return Paired(n, wins, losses, (lo, hi))
