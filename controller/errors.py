"""Errors of the release controller. Each has a one-line message for the user and an exit code; the
CLI catches them in one place (:func:`controller.release.main`).

    SwitchyardError                exit 1
    ├── Refused                    exit 1  the command is not allowed now; nothing changed
    ├── CheckFailed                exit 1  a candidate failed a named step; live traffic untouched
    ├── Busy                       exit 1  another release.py command holds the lock
    ├── UsageError                 exit 2  bad arguments or settings
    └── NeedsOperator              exit 3  the state cannot be repaired automatically
        └── StateError             exit 3  the state file cannot be read or written (read-only, full, ...)
"""

from __future__ import annotations

from controller.vocabulary import StepName


class SwitchyardError(Exception):
    exit_code = 1


class Refused(SwitchyardError):
    pass


class CheckFailed(SwitchyardError):
    def __init__(self, step: StepName, reason: str) -> None:
        super().__init__(f"{step} failed: {reason}")
        self.step = step
        self.reason = reason


class Busy(SwitchyardError):
    pass


class UsageError(SwitchyardError):
    exit_code = 2


class NeedsOperator(SwitchyardError):
    exit_code = 3


class StateError(NeedsOperator):
    pass
