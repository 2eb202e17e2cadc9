"""Option syntax the service and the controller share (the controller checks an instance's options
before it starts one): CPU lists, and one line for a settings error."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError


def parse_cpus(value: str) -> list[int]:
    """``auto`` -> the CPUs this process may use; ``auto-reversed`` -> the same, last first; ``off`` ->
    []; ``2,3`` or ``0-3`` -> those, which must be among the CPUs this process may use. Raises
    ValueError with a one-line reason."""
    allowed = sorted(os.sched_getaffinity(0))
    text = value.strip().lower()
    if text == "off":
        return []
    if text == "auto":
        return allowed
    if text == "auto-reversed":
        return allowed[::-1]
    cpus: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not (last.isdigit() and int(last) >= int(first))):
            raise ValueError(f"expected auto, auto-reversed, off or a CPU list such as 2,3 or 0-3, got {value!r}")
        cpus.extend(range(int(first), int(last if dash else first) + 1))
    missing = [cpu for cpu in cpus if cpu not in allowed]
    if missing:
        raise ValueError(f"CPU {missing[0]} is not one this process may use: {allowed}")
    return cpus


def first_error(exc: ValidationError) -> tuple[str, Any, str]:
    """The first problem of a settings ``ValidationError``: (setting, the value given, the reason)."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"])
    return key, err.get("input"), err["msg"].removeprefix("Value error, ")
