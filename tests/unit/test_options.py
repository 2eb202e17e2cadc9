"""The option syntax the service and the controller share: CPU lists."""

from __future__ import annotations

import os

import pytest

from artifact.options import parse_cpus


@pytest.mark.parametrize("value", ["x", "", "3-1", "0,,1", "-1"])
def test_malformed_cpu_lists_are_refused_with_the_accepted_forms(value: str) -> None:
    with pytest.raises(ValueError, match="expected auto, auto-reversed, off or a CPU list"):
        parse_cpus(value)


def test_cpu_lists_keep_their_order() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert parse_cpus("auto") == allowed and parse_cpus("auto-reversed") == allowed[::-1]
    assert parse_cpus("off") == [] and parse_cpus(",".join(map(str, allowed[::-1]))) == allowed[::-1]
