"""The controller's words, each written once: what a command or a history line does, the steps a plan
is made of, and the kinds of rollout. They are strings (``Verb.UP == "up"``), so the state file,
history and the console read and write them as before, and a misspelt one is an error at import, not
a comparison that is silently never true."""

from __future__ import annotations

from enum import StrEnum


class Verb(StrEnum):
    """A command, and the action of the history line it writes."""

    UP = "up"
    STAGE = "stage"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"
    ADVANCE = "advance"
    CONCLUDE = "conclude"
    HEAL = "heal"
    DOWN = "down"
    CANARY = "canary"  # a canary step begins (history)
    WATCH = "watch"  # the watch after a deploy ended (history)
    REPAIR = "repair"  # what a command found broken and put right (history)


class StepName(StrEnum):
    """The steps of a plan (:mod:`controller.core.steps` says what each does)."""

    VERIFY = "verify"
    START = "start"
    READY = "ready"
    SMOKE = "smoke"
    SCORE = "score"  # the smoke step's re-scoring of the claimed accuracy, named apart when it fails
    GATE = "gate"
    EVIDENCE = "evidence"
    SPEED = "speed"
    ROUTER = "router"
    WEIGH = "weigh"
    FAILOVER = "failover"
    FLIP = "flip"
    RETIRE = "retire"
    COMMIT = "commit"
    STOP = "stop"
    STOP_ROUTER = "stop-router"
    ENSURE_ROUTER = "ensure-router"


class Kind(StrEnum):
    """A rollout in progress."""

    CANARY = "canary"
    WATCH = "watch"
