"""``release.py`` that stops before one step of its plan, so a test can kill -9 it there:

    python tests/paused_release.py STEP release.py-arguments...

It prints ``paused at STEP`` and sleeps; the production CLI has no such pause, only the hook."""

from __future__ import annotations

import sys
import time

from controller import release


class PauseAt:
    def __init__(self, step: str) -> None:
        self.step = step

    def before_step(self, step: str) -> None:
        if step == self.step:
            print(f"paused at {step}", flush=True)
            time.sleep(300)


if __name__ == "__main__":
    sys.exit(release.main(sys.argv[2:], hooks=PauseAt(sys.argv[1])))
