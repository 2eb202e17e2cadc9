"""The controller's sentences that users act on, each written once and named: the refusals, the
outcome of a flip, and what a repair did. Code fills a template by name (``NO_PREVIOUS_SLOT(held="")``)
and tests find it by name (``NO_PREVIOUS_SLOT.found_in(stderr)``), so rewording a sentence changes
one line here and no test."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """A one-line ``str.format`` template with named fields."""

    text: str

    def __call__(self, **values: object) -> str:
        return self.text.format(**values)

    def pattern(self, **values: object) -> re.Pattern[str]:
        """A regex for this message within one line: the fields in ``values`` as given, the others any text."""
        parts = []
        for literal, name, _, _ in string.Formatter().parse(self.text):
            parts.append(re.escape(literal))
            if name is not None:
                parts.append(re.escape(str(values[name])) if name in values else ".*?")
        return re.compile("".join(parts))

    @property
    def names(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.text) if name is not None]

    def found_in(self, output: str, **values: object) -> bool:
        return self.pattern(**values).search(output) is not None


# ------------------------------------------------------------------ refusals (nothing changed)

CANNOT = Message("cannot {command}: {reason}")
NOT_ALLOWED_NOW = Message("cannot {command}: {hint} (allowed now: {allowed})")
NOTHING_LIVE = Message("nothing is live; run `release.py up NAME VERSION` first")
NOTHING_TO_ROLL_BACK = Message("nothing is live, so there is nothing to roll back")
NOTHING_STAGED = Message(
    "nothing is staged and no VERSION given; run `release.py stage VERSION` or `release.py promote VERSION`"
)
CANARY_IN_PROGRESS = Message("a canary is in progress; `release abort` ends it first")
CANARY_COMPLETES_FIRST = Message("a canary is in progress; `release promote` completes it, `abort` ends it")
ALREADY_LIVE = Message("v{version} is already live in {color}")
NO_CANARY = Message("no canary is in progress")
NO_ROLLOUT = Message("no canary or watch is in progress")
NO_WATCH = Message("no watch is in progress")
NO_PREVIOUS_SLOT = Message("there is no previous slot to flip back to{held}")
NOTHING_TO_RESTORE = Message("nothing to restore: no deployment is recorded here; `release up NAME VERSION` starts one")
NOT_HEALTHY = Message("{color} (v{version}) is not healthy ({problem}); refusing to flip to it")
LIVE_IS_DOWN = Message("{name} v{version} is live in {color}, but it is {problem}: users get errors; {way_out}")

# ------------------------------------------------------------------ what a flip did

LIVE = Message(
    "{action}: {name} v{version} ({color}) is live at {url}; v{old_version} ({old_color}) keeps running as "
    "the rollback target{said}"
)
LIVE_AGAIN = Message("{action}: {name} v{version} ({color}) is live again{said}; {reason}")
PARKED = Message("v{version} stays parked (staged) in {color}, out of traffic")
WATCHED = Message(
    "the agent watches it for {seconds} s and rolls back by itself on errors, latency or a shift in its predictions"
)
CANARY_TAKES = Message(
    "canary: {name} v{version} ({color}) takes {weight}% of live traffic; the agent moves it on to {rest}, a step "
    "every {seconds} s at least while the analysis passes; `release abort` sends every request back to v{live}"
)
TAKES_ALL = Message("{action}: {name} v{version} ({color}) takes all live traffic; {reason}")

# ------------------------------------------------------------------ what a repair did

REPAIR_COMPLETED = Message("repair: completing the interrupted {action}: {color} (v{version}) is live")
REPAIR_NEVER_FLIPPED = Message("repair: the interrupted {action} never reached the router; live traffic unchanged")
REPAIR_STOPPED_HALF_STARTED = Message("repair: stopped the half-started {action} of v{version} (it had reached {step})")
REPAIR_ROUTER_DOWN = Message("repair: the router ({kind}) is not running; starting it again")
REPAIR_ROUTER_ELSEWHERE = Message("repair: the router sends traffic elsewhere than the facts say; pointing it back")
REPAIR_STRAY_INSTANCE = Message("repair: stopping a stray instance ({handle}) that no slot accounts for")
REPAIR_STRAY_ROUTER = Message("repair: stopping a stray router ({handle})")
