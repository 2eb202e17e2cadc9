"""One deployment (one run dir), and the rhythm every command follows.

A mutating command takes the run dir's lock, loads the facts, repairs what a crashed command left
(:mod:`controller.run.repair`), observes what runs (:mod:`controller.run.view`), asks the pure planner
(:mod:`controller.core.planner`) for a refusal or a plan, and has the runner (:mod:`controller.run.runner`)
carry the plan out. ``status`` and ``history`` only read. The seams (backend, router drivers, HTTP
probes, store, clock, the step hook) are built here from the settings, or injected by a test.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import Any

from artifact.manifest import Manifest
from controller import messages
from controller.core import evidence
from controller.core.facts import Canary, Event, Facts, Shadow, Watch
from controller.core.phase import Observed
from controller.core.planner import plan
from controller.core.steps import Command, Made, Plan, Refusal
from controller.drivers import agents, lock, notify, registry, shadow
from controller.drivers.backends import make_backend
from controller.drivers.backends.base import Backend
from controller.drivers.notify import Notifier
from controller.drivers.probes import HttpProbes
from controller.drivers.routers import make_router
from controller.drivers.routers.base import RouterDriver
from controller.drivers.seams import Clock, Hooks, NoHooks, Probes, Seams, Store, SystemClock
from controller.drivers.store import SqliteStore
from controller.errors import CheckFailed, StateError
from controller.run import adopt, repair, view
from controller.run.runner import Runner
from controller.settings import ControllerSettings
from controller.vocabulary import StepName, Verb

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Deployment:
    def __init__(
        self,
        settings: ControllerSettings,
        *,
        backend: Backend | None = None,
        routers: Callable[[str], RouterDriver] | None = None,
        probes: Probes | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        hooks: Hooks | None = None,
        say: Say = _stderr,
        actor: str | None = None,
        start_agent: Callable[[Facts], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend or make_backend(settings)
        self._make_router = routers or (lambda kind: make_router(settings, kind))
        self._routers: dict[str, RouterDriver] = {}
        self.probes = probes or HttpProbes()
        self.clock = clock or SystemClock()
        # Who acts: a console user, or for the CLI the operating-system user; on every history line.
        self.actor = actor or f"{getpass.getuser()} (cli)"
        self.store = store or SqliteStore(settings.run_dir / "state.db", self.clock.time, self.actor)
        self.hooks = hooks or NoHooks()
        self.say = say
        self.notifier = Notifier(notify.urls(settings.notify, settings.run_dir), settings.console_url, say)
        self.start_agent = start_agent or (lambda facts: agents.ensure(settings, facts))

    def seams(self, facts: Facts) -> Seams:
        kind = facts.router.kind if facts.router else self._default_router_kind()
        if kind not in self._routers:
            self._routers[kind] = self._make_router(kind)
        return Seams(self.store, self.backend, self._routers[kind], self.probes, self.clock, self.hooks, self.say)

    def _default_router_kind(self) -> str:
        return "docker-nginx" if self.settings.backend == "docker" else self.settings.resolved_router()

    def _manifest_of(self, facts: Facts, version: int) -> Manifest:
        assert facts.name is not None
        return registry.manifest(self.settings.models_dir, facts.name, version, self.settings.trust())

    def observe(self, facts: Facts) -> Observed:
        return view.observe(facts, self.seams(facts), self._manifest_of, self.settings)

    # ------------------------------------------------------------------ commands

    def up(self, name: str | None = None, version: int | None = None) -> str:
        """Without a name, restore what the facts describe (after a reboot, say): the same as heal."""
        if name is None or version is None:
            return self.heal()
        return self.execute(Command(Verb.UP, version, model=name))

    def stage(self, version: int, *, force: bool = False, shadow: Shadow | None = None) -> str:
        """Without ``shadow``, the settings say whether (and how much) live traffic is copied."""
        settings = self.settings
        if shadow is None and settings.shadow and settings.shadow_percent > 0:
            shadow = Shadow(settings.shadow_percent, settings.shadow_rate)
        return self.execute(Command(Verb.STAGE, version, force=force, shadow=shadow))

    def promote(
        self,
        version: int | None = None,
        *,
        force: bool = False,
        canary: tuple[int, ...] = (),
        step_seconds: float | None = None,
        watch_seconds: float | None = None,
    ) -> str:
        settings = self.settings
        return self.execute(
            Command(
                Verb.PROMOTE,
                version,
                force=force,
                canary=canary,
                step_seconds=settings.step_seconds if step_seconds is None else step_seconds,
                watch_seconds=settings.watch_seconds if watch_seconds is None else watch_seconds,
            )
        )

    def rollback(self, reason: str = "", *, automatic: bool = False) -> str:
        return self.execute(Command(Verb.ROLLBACK, reason=reason, automatic=automatic))

    def abort(self, reason: str = "") -> str:
        """Every request back to the stable slot at once: a canary ends, a watched deploy is rolled back."""
        return self.execute(Command(Verb.ABORT, reason=reason))

    def advance(self, reason: str = "") -> str:
        return self.execute(Command(Verb.ADVANCE, reason=reason))

    def conclude(self, reason: str) -> str:
        return self.execute(Command(Verb.CONCLUDE, reason=reason))

    def heal(self) -> str:
        return self.execute(Command(Verb.HEAL))

    def down(self) -> str:
        return self.execute(Command(Verb.DOWN))

    def execute(self, command: Command) -> str:
        run_dir = self.settings.run_dir
        with lock.exclusive(run_dir, command.name, self.settings.lock_timeout, self.settings.socket_dir / "lock"):
            try:
                stored = self.store.load()
            except StateError:
                if command.name != Verb.DOWN:
                    raise
                stored = Facts()  # down stops what runs, found by its tags and pid files, state or not
            if command.name == Verb.UP and stored.active is None and stored.op is None:
                # Before repair, which would stop what no fact accounts for: compose's router and blue.
                assert command.model is not None and command.version is not None
                model = command.model
                models, trust = self.settings.models_dir, self.settings.trust()
                registry.manifest(models, model, command.version, trust)  # a clear usage error for a missing version
                adopted = adopt.adopt(
                    model,
                    command.version,
                    lambda version: registry.manifest(models, model, version, trust),
                    self.seams(Facts()),
                    self.settings.ready_timeout,
                )
                if adopted:
                    return adopted
            # `down` stops everything, whatever an interrupted command left: nothing to repair first.
            facts = stored if command.name == Verb.DOWN else repair.repair(stored, self.seams(stored))
            self._follow_shadow(facts)
            if command.name != Verb.DOWN and self.start_agent(facts):
                self.store.record(Event(Verb.REPAIR, "repaired", reason="the agent was not running; started it again"))
            decision = plan(command, facts, self.observe(facts))
            if isinstance(decision, Refusal):
                if decision.event is not None:
                    self.store.record(decision.event)
                raise decision.error(decision.reason)
            if decision.message:
                return decision.message
            refused: CheckFailed | None = None
            try:
                after, made = Runner(self.settings, self.seams(decision.before)).run(decision, facts)
            except CheckFailed as exc:
                if exc.step not in (StepName.GATE, StepName.EVIDENCE):
                    raise
                refused = exc
            else:
                message = self._summary(decision, facts, after, made)
            finally:
                settled = self._settled(facts)
                self._follow_shadow(settled)
                self.start_agent(settled)
        if refused is not None:  # the lock is released: a slow webhook must not hold up the next command
            self._notify("gate_refused", "/compare", facts, command.version, reason=refused.reason)
            raise refused
        last = decision.steps[-1]
        events = {Verb.STAGE: "staged", Verb.PROMOTE: "deployed", Verb.ROLLBACK: "rolled_back", Verb.ABORT: "aborted"}
        if last.name == StepName.COMMIT and last.action in events:
            event = events[last.action]
            self._notify(event, "/compare" if event == "staged" else "/", facts, last.version, reason=message)
        return message

    def _follow_shadow(self, facts: Facts) -> None:
        """The live instance copies to the staged candidate exactly while the facts say so."""
        try:
            started = shadow.reconcile(facts, self.settings)
        except OSError as exc:  # a read-only or full run dir: shadow copies are not worth failing a command
            self.say(f"warning: cannot update the shadow request in {shadow.folder(self.settings)}: {exc.strerror}")
            return
        if started is not None and not shadow.wait_started(started, self.clock):
            self.say("warning: the live instance has not started copying requests to the candidate after 5 s")

    def _settled(self, fallback: Facts) -> Facts:
        try:
            return self.store.load()
        except StateError:
            return fallback

    def _notify(self, event: str, page: str, before: Facts, version: int | None, reason: str) -> None:
        live = before.slot(before.active)
        self.notifier.send(
            event,
            page,
            model=before.name,
            version=version,
            live_version=live.version if live else None,
            actor=self.actor,
            message=reason,
        )

    def _summary(self, plan: Plan, before: Facts, after: Facts, made: Made) -> str:
        last = plan.steps[-1]
        live = after.slot(after.active)
        assert live is not None or last.action == Verb.DOWN
        if last.name == StepName.ENSURE_ROUTER and last.action == Verb.HEAL:
            assert live is not None and after.router is not None
            restarted = [f"v{s.version} in {s.color}" for s in plan.steps if s.name == StepName.COMMIT]
            what = f"restarted {', '.join(restarted)}" if restarted else "everything runs"
            done = "; ".join([what, *made.notes])
            return f"heal: {after.name} v{live.version} is live at {after.router.url}/predict ({done})"
        if last.name == StepName.ENSURE_ROUTER:
            assert live is not None and after.router is not None
            notes = [*made.notes, *plan.notes]
            extra = f" ({'; '.join(notes)})" if notes else ""
            return f"up: already up: {after.name} v{live.version} is live at {after.router.url}/predict{extra}"
        if last.action == Verb.UP:
            assert live is not None and after.router is not None
            return (
                f"up: {after.name} v{live.version} is live at {after.router.url}/predict (router: {after.router.kind})"
            )
        if last.action == Verb.DOWN:
            return f"down: stopped {made.stopped} process(es); history is kept in {self.settings.run_dir / 'state.db'}"
        if last.action == Verb.STAGE:
            staged = after.slot(after.staged)
            assert staged is not None and live is not None
            copies = (
                f"; it gets a copy of {after.shadow.percent:g}% of live /predict requests (at most "
                f"{after.shadow.rate:g}/s): `release evidence` compares the answers"
                if after.shadow
                else "; no shadow traffic"
            )
            return (
                f"stage: {after.name} v{staged.version} is staged in {staged.color} at {staged.url} "
                f"(preview); live traffic still goes to v{live.version}{copies}"
            )
        rollout = after.rollout
        if last.action == Verb.CANARY:
            assert isinstance(rollout, Canary) and live is not None
            canary = after.slots[rollout.color]
            rest = " -> ".join(f"{w}%" for w in rollout.steps[rollout.step + 1 :])
            return messages.CANARY_TAKES(
                name=after.name,
                version=canary.version,
                color=canary.color,
                weight=rollout.weight,
                rest=rest,
                seconds=f"{rollout.step_seconds:g}",
                live=live.version,
            )
        if last.action in (Verb.ABORT, Verb.WATCH):
            assert live is not None
            return messages.TAKES_ALL(
                action=last.action, name=after.name, version=live.version, color=live.color, reason=last.reason
            )
        old = before.slot(before.active)
        assert live is not None and old is not None and after.router is not None
        said = "".join(f"; {note}" for note in plan.notes)
        if isinstance(rollout, Watch):
            said += "; " + messages.WATCHED(seconds=f"{rollout.watch_seconds:g}")
        if last.parked:
            return messages.LIVE_AGAIN(
                action=last.action,
                name=after.name,
                version=live.version,
                color=live.color,
                said="; " + messages.PARKED(version=old.version, color=old.color),
                reason=last.reason,
            )
        return messages.LIVE(
            action=last.action,
            name=after.name,
            version=live.version,
            color=live.color,
            url=after.router.url,
            old_version=old.version,
            old_color=old.color,
            said=said,
        )

    # ------------------------------------------------------------------ reading

    def status(self) -> dict[str, Any]:
        """What the facts say, checked against what runs; without a usable state, what runs."""
        try:
            facts, problem = self.store.load(), None
        except StateError as exc:
            facts, problem = Facts(), str(exc)
        seams = self.seams(facts)
        status = view.status(facts, self.observe(facts), seams, self.settings.run_dir)
        status["agent"] = {
            "needed": agents.needed(self.settings, facts),
            "running": agents.handle(self.settings) is not None,
            "supervise": self.settings.supervise,
        }
        status["rollout"] = view.rollout(facts, seams)
        if status["rollout"] is not None and facts.rollout is not None:
            read = agents.reading(self.settings.run_dir, facts.rollout)
            status["rollout"]["analysis"] = None if read is None else {"at": read[0], "words": read[1]}
        candidate = facts.slot(facts.staged)
        found: str | None = None
        if candidate is not None and facts.shadow is not None:
            found = evidence.summary(shadow.evidence(self.settings, candidate, 0))
        return status | {"state_problem": problem, "shadow": found}

    def evidence(self) -> tuple[Facts, evidence.Evidence | None]:
        """The staged candidate's shadow evidence (None when nothing is staged with shadow traffic)."""
        facts = self.store.load()
        candidate = facts.slot(facts.staged)
        if candidate is None or facts.shadow is None:
            return facts, None
        return facts, shadow.evidence(self.settings, candidate, self.settings.shadow_examples)

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.store.history(limit)
