"""The agent: one detached process per deployment that watches and supervises, so that neither a bad
model nor a dead process waits for a person.

- A canary: each step lasts ``step_seconds`` at least; the next starts only once the analysis
  (:mod:`controller.core.analysis`) has had enough requests and passes. A breach aborts the canary.
- The watch after a deploy (``watch_seconds``): the new live slot against the previous one, which
  still runs; a breach rolls back, and the failed version stays parked (staged) in its slot.
- Supervision (``supervise``): a dead router, or a dead live instance, is healed (`release heal`:
  traffic to the other slot while the live one restarts, if that one is ready).

Every decision is an ordinary command (:class:`controller.run.deployment.Deployment`) under the same lock
as the CLI, with the agent as its actor, so a person and the agent acting at once cannot corrupt the
state, and history says who did what. The controller starts the agent when a deployment needs it and
`down` stops it; its settings are the controller's own, passed in ``<run dir>/agent.json``.

Nobody types a command to bring a dead agent back: the agent and its keeper watch each other
(:mod:`controller.drivers.agents`, which also starts and stops them).

    python -m controller.agent --run-dir DIR [--keeper]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from controller.core import analysis, policy
from controller.core.facts import Canary, Facts, Instance
from controller.drivers import agents, host, loopback
from controller.errors import SwitchyardError
from controller.run.deployment import Deployment
from controller.settings import ControllerSettings

ACTOR = "agent (automatic)"
# The latency test measures bursts in blocks of a second: longer than the stalls a busy machine gives
# a process, so that one stall rarely spans several; kept for a window of up to a day.
BLOCK_SECONDS = 1.0
MAX_BLOCKS = 86_400
log = logging.getLogger("switchyard.agent")


def scrape(instance: Instance) -> analysis.Sample | None:
    try:
        response = loopback.client().get(instance.url + "/metrics", timeout=2.0)
    except Exception:  # a slot that does not answer gives no sample this time
        return None
    return analysis.parse(response.text) if response.status_code == 200 else None


class Agent:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.deployment = Deployment(settings, actor=ACTOR, say=log.info)
        self.window: tuple[object, ...] | None = None  # the rollout step the baselines belong to
        self.baseline: dict[str, analysis.Sample] = {}
        self.blocks: list[analysis.Sample] = []  # the new slot's requests, second by second
        self.block: tuple[float, analysis.Sample] | None = None  # when the current second began, and its counters
        self.waiting = ""
        self.quiet_until = 0.0
        self.published_at = 0.0

    def tick(self) -> None:
        try:
            facts = self.deployment.store.load()
        except SwitchyardError:
            return
        action = policy.decide(facts, self._look(facts), self.settings)
        self._publish(facts, action)
        if action.command == policy.WAIT:
            if action.reason != self.waiting and time.monotonic() >= self.quiet_until:
                self.waiting, self.quiet_until = action.reason, time.monotonic() + 10.0  # a line in ten seconds
                log.info(f"waits: {action.reason}")
            return
        commands: dict[str, Callable[[], str]] = {
            policy.HEAL: lambda: self.deployment.heal(),
            policy.ABORT: lambda: self.deployment.abort(action.reason),
            policy.ROLLBACK: lambda: self.deployment.rollback(action.reason, automatic=True),
            policy.ADVANCE: lambda: self.deployment.advance(action.reason),
            policy.CONCLUDE: lambda: self.deployment.conclude(action.reason),
        }
        try:
            log.info(commands[action.command]())
        except SwitchyardError as exc:  # busy, refused, a check: look again at the next tick
            log.warning(f"{type(exc).__name__}: {exc}")

    def _publish(self, facts: Facts, action: policy.Action) -> None:
        """What the analysis says now, for `status` and the console: once a second is enough to read."""
        now = time.time()
        if facts.rollout is None or facts.op is not None or now < self.published_at + 1.0:
            return
        self.published_at = now
        with contextlib.suppress(OSError):  # a full disk costs the words, never the decision
            agents.publish(self.settings.run_dir, facts.rollout, action.reason, now)

    def _look(self, facts: Facts) -> policy.Seen:
        """What the policy decides on: which processes live, and the two slots' metrics."""
        now = time.time()
        if facts.op is not None or facts.active is None:
            return policy.Seen(now)
        seams = self.deployment.seams(facts)
        live = facts.slots[facts.active]
        broken = (facts.router is not None and not seams.router.alive(facts.router)) or not seams.backend.alive(
            live.handle
        )
        rollout = facts.rollout
        if broken or rollout is None:
            return policy.Seen(now, broken=broken)
        new_slot = facts.slots[rollout.color]
        canary = isinstance(rollout, Canary)
        if canary and not seams.backend.alive(new_slot.handle):
            return policy.Seen(now, canary_alive=False)
        if rollout.window != self.window:
            self.window, self.baseline, self.blocks, self.block = rollout.window, {}, [], None
        old_slot = facts.slot(facts.active if canary else facts.previous)
        new = self._since(new_slot)
        if old_slot is None:
            old = None
        elif canary:
            old = self._since(old_slot)
        else:  # the previous slot gets no traffic since the deploy: its whole life as live is its record
            old = scrape(old_slot)
        if new is not None:
            if self.block is None:
                self.block = (now, new)
            elif now - self.block[0] >= BLOCK_SECONDS and len(self.blocks) < MAX_BLOCKS:
                self.blocks.append(new.minus(self.block[1]))
                self.block = (now, new)
        return policy.Seen(now, new=new, old=old, blocks=tuple(self.blocks))

    def _since(self, slot: Instance) -> analysis.Sample | None:
        now = scrape(slot)
        if now is None:
            return None
        base = self.baseline.setdefault(slot.handle, now)
        return now.minus(base)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the deployment's run dir")
    parser.add_argument("--keeper", action="store_true", help="be the agent's keeper rather than the agent")
    args = parser.parse_args()
    role = "keeper" if args.keeper else "agent"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {role} %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line a scrape would drown the decisions
    run_dir = Path(args.run_dir)
    if agents.hold(run_dir / f"{role}.lock") is None:
        return 0  # another one runs already
    own = run_dir / f"{role}.pid"
    agents.write_pid(own, os.getpid())
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    if args.keeper:
        return agents.keep(run_dir, stopping)
    settings_file = run_dir / "agent.json"
    seen = None
    agent: Agent | None = None
    while not stopping.is_set():
        try:
            mtime = settings_file.stat().st_mtime_ns
        except OSError:
            return 0  # the deployment is gone
        if mtime != seen:  # the controller wrote newer settings
            seen = mtime
            agent = Agent(ControllerSettings.model_validate_json(settings_file.read_text()))
        assert agent is not None
        try:
            agent.tick()
        except Exception:  # a bug must not leave the deployment unwatched: say it, look again
            log.exception("the agent's look failed")
        if agents.running(own, "agent") != host.handle_of(os.getpid()):
            agents.write_pid(own, os.getpid())  # a duplicate started meanwhile wrote its own, then gave up
        if agents.running(run_dir / "keeper.pid", "keeper") is None:
            agents.spawn(run_dir, "keeper")  # the keeper died (or never ran): the agent starts it again
        stopping.wait(agent.settings.agent_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
