"""The agent: one detached process per deployment that watches and supervises, so that neither a bad
model nor a dead process waits for a person.

- A canary: each step lasts ``step_seconds`` at least; the next starts only once the analysis
  (:mod:`controller.analysis`) has had enough requests and passes. A breach aborts the canary.
- The watch after a deploy (``watch_seconds``): the new live slot against the previous one, which
  still runs; a breach rolls back, and the failed version stays parked (staged) in its slot.
- Supervision (``supervise``): a dead router, or a dead live instance, is healed (`release heal`:
  traffic to the other slot while the live one restarts, if that one is ready).

Every decision is an ordinary command (:class:`controller.deployment.Deployment`) under the same lock
as the CLI, with the agent as its actor, so a person and the agent acting at once cannot corrupt the
state, and history says who did what. The controller starts the agent when a deployment needs it and
`down` stops it; its settings are the controller's own, passed in ``<run dir>/agent.json``.

    python -m controller.agent --run-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from controller import analysis, host, loopback
from controller.errors import SwitchyardError
from controller.facts import Facts, Instance
from controller.settings import ControllerSettings

ACTOR = "agent (automatic)"
log = logging.getLogger("switchyard.agent")


def _files(settings: ControllerSettings) -> tuple[Path, Path, Path]:
    run = settings.run_dir
    return run / "agent.pid", run / "agent.json", run / "logs" / "agent.log"


def needed(settings: ControllerSettings, facts: Facts) -> bool:
    return facts.active is not None and (facts.rollout is not None or settings.supervise)


def handle(settings: ControllerSettings) -> str | None:
    """The running agent's handle, or None."""
    pid_file = _files(settings)[0]
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    found = host.handle_of(pid)
    return found if host.alive(found) and host.option(pid, "--run-dir") is not None else None


def ensure(settings: ControllerSettings, facts: Facts) -> bool:
    """Start the agent if the deployment needs one and none runs; True if it was started."""
    pid_file, settings_file, log_file = _files(settings)
    if not needed(settings, facts):
        return False
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = settings_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(settings.model_dump_json())
    os.replace(tmp, settings_file)
    if handle(settings) is not None:
        return False
    argv = [sys.executable, "-m", "controller.agent", "--run-dir", str(settings.run_dir.resolve())]
    started = host.spawn(argv, log=log_file, env=host.child_env(), cwd=host.PROJECT_ROOT)
    pid_file.write_text(f"{host.pid_of(started)}\n")
    return True


def stop(settings: ControllerSettings) -> bool:
    running = handle(settings)
    if running is None:
        return False
    host.terminate(running, grace=15.0)
    _files(settings)[0].unlink(missing_ok=True)
    return True


def scrape(instance: Instance) -> analysis.Sample | None:
    try:
        response = loopback.client().get(instance.url + "/metrics", timeout=2.0)
    except Exception:  # a slot that does not answer gives no sample this time
        return None
    return analysis.parse(response.text) if response.status_code == 200 else None


class Agent:
    def __init__(self, settings: ControllerSettings) -> None:
        from controller.deployment import Deployment

        self.settings = settings
        self.deployment = Deployment(settings, actor=ACTOR, say=log.info)
        self.window: tuple[object, ...] | None = None  # the rollout step the baselines belong to
        self.baseline: dict[str, analysis.Sample] = {}
        self.waiting = ""

    def tick(self) -> None:
        try:
            facts = self.deployment.store.load()
        except SwitchyardError:
            return
        if facts.op is not None or facts.active is None:
            return  # a command is running, or one died: the next command repairs first
        if self.settings.supervise and self._broken(facts):
            self._act(self.deployment.heal)
            return
        if facts.rollout is not None:
            self._analyse(facts)

    def _broken(self, facts: Facts) -> bool:
        seams = self.deployment.seams(facts)
        live = facts.slots[facts.active or ""]
        router_dead = facts.router is not None and not seams.router.alive(facts.router)
        return router_dead or not seams.backend.alive(live.handle)

    def _analyse(self, facts: Facts) -> None:
        rollout = facts.rollout
        assert rollout is not None and facts.active is not None
        new_slot = facts.slots[rollout.color]
        old_slot = facts.slot(facts.active if rollout.kind == "canary" else facts.previous)
        if rollout.kind == "canary" and not self.deployment.seams(facts).backend.alive(new_slot.handle):
            where = f"step {rollout.step + 1} of {len(rollout.steps)}, {rollout.weight}% of traffic"
            self._act(lambda: self.deployment.abort(f"automatic rollback: the canary is not running ({where})"))
            return
        window = (rollout.kind, rollout.color, rollout.step, rollout.started_at)
        if window != self.window:
            self.window, self.baseline = window, {}
        new = self._since(new_slot)
        if new is None:
            return
        if rollout.kind == "canary":
            old = self._since(old_slot) if old_slot else None
        else:  # the previous slot gets no traffic since the deploy: its whole life as live is its record
            old = scrape(old_slot) if old_slot else None
        verdict = analysis.judge(new, old, self.settings)
        elapsed = time.time() - rollout.started_at
        if verdict.breach is not None:
            if rollout.kind == "canary":
                where = f"step {rollout.step + 1} of {len(rollout.steps)}, {rollout.weight}% of traffic"
                self._act(lambda: self.deployment.abort(f"automatic rollback: {verdict.breach} ({where})"))
            else:
                reason = f"automatic rollback: {verdict.breach} ({elapsed:.0f} s into the watch)"
                self._act(lambda: self.deployment.rollback(reason, automatic=True))
        elif rollout.kind == "canary" and elapsed >= rollout.step_seconds:
            if verdict.enough:
                self._act(lambda: self.deployment.advance(f"analysis passed at {rollout.weight}%: {verdict.summary}"))
            elif verdict.summary != self.waiting:
                self.waiting = verdict.summary
                log.info(f"canary step {rollout.step + 1} waits: {verdict.summary}")
        elif rollout.kind == "watch" and elapsed >= rollout.watch_seconds:
            outcome = "passed" if verdict.enough else "ended without a verdict"
            self._act(lambda: self.deployment.conclude(f"watch {outcome} after {elapsed:.0f} s: {verdict.summary}"))

    def _since(self, slot: Instance) -> analysis.Sample | None:
        now = scrape(slot)
        if now is None:
            return None
        base = self.baseline.setdefault(slot.handle, now)
        return now.minus(base)

    def _act(self, action: object) -> None:
        assert callable(action)
        try:
            log.info(action())
        except SwitchyardError as exc:  # busy, refused, a check: look again at the next tick
            log.warning(f"{type(exc).__name__}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the deployment's run dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line a scrape would drown the decisions
    settings_file = Path(args.run_dir) / "agent.json"
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
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
        agent.tick()
        stopping.wait(agent.settings.agent_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
