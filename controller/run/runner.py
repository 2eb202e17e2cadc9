"""The step runner: carries out a plan through the seams, journaling as it goes.

Before each step it writes the facts that step leaves behind (:func:`controller.core.steps.leaves`): for
a journaled step, the operation in flight and the step it reached; after the step, the same entry
again if the step made something the journal must know (the candidate's handle, the router). So a
controller killed at any point leaves a journal that :mod:`controller.run.repair` reads the same way,
whatever the command was. A commit step writes the new facts and the history line in one transaction.

A step that fails is settled the way repair settles a crash (the candidate stopped, a flip undone, or
completed if the router already took it), the failure is written to history, and the error goes on
to the CLI: live traffic is left as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from artifact.manifest import ArtifactError, Manifest
from artifact.trust import verify
from controller.core import evidence, quality
from controller.core.facts import Canary, Event, Facts
from controller.core.steps import JOURNALED, Made, Plan, Step, leaves
from controller.drivers import predictions, registry, shadow
from controller.drivers.seams import Seams
from controller.errors import CheckFailed, NeedsOperator
from controller.run import checks, repair
from controller.settings import ControllerSettings
from controller.vocabulary import StepName, Verb


class Runner:
    def __init__(self, settings: ControllerSettings, seams: Seams) -> None:
        self.settings = settings
        self.seams = seams
        self.manifest: Manifest | None = None  # the candidate's
        self.flip_started = 0.0
        self.evidence = ""  # what the deploy was decided on, for its history line

    def run(self, plan: Plan, stored: Facts) -> tuple[Facts, Made]:
        """Carry out ``plan`` from the stored facts; return the facts it leaves and what it made."""
        facts, committed, made = plan.before, stored, Made()
        for step in plan.steps:
            facts = self._journal(step, facts, made)
            self.seams.hooks.before_step(step.name)
            try:
                facts = self._execute(step, facts, made)
            except (Exception, KeyboardInterrupt) as exc:
                self._abandon(step, self._journal(step, facts, made), committed, exc)
                raise
            if step.name == StepName.COMMIT or step.name == StepName.ENSURE_ROUTER:
                committed = facts
            else:
                facts = self._journal(step, facts, made)
        return facts, made

    def _journal(self, step: Step, facts: Facts, made: Made) -> Facts:
        """The one place a run writes its journal: the entry ``step`` leaves, if it changed."""
        if step.name not in JOURNALED:
            return facts
        entry = leaves(step, facts, made)
        if entry != facts:
            self.seams.store.save(entry)
        return entry

    def _abandon(self, step: Step, facts: Facts, committed: Facts, exc: BaseException) -> None:
        settled, completed = committed, False
        if facts.op is not None:
            settled, _, completed = repair.settle(facts, self.seams, lambda message: None)
        final = settled if completed else committed
        if isinstance(exc, KeyboardInterrupt) or step.name not in (*JOURNALED, StepName.VERIFY):
            if final != committed:
                self.seams.store.save(final)
            return
        where = exc.step if isinstance(exc, CheckFailed) else step.name
        live = committed.slot(committed.active)
        event = Event(step.action, "failed", live.version if live else None, step.version, where, str(exc), step.forced)
        self.seams.store.save(final, event)

    # ------------------------------------------------------------------ the steps

    def _execute(self, step: Step, facts: Facts, made: Made) -> Facts:
        seams, say = self.seams, self.seams.say
        if step.name == StepName.VERIFY:
            self.manifest = self._verify(facts, step)
        elif step.name == StepName.START:
            say(f"{step.action}: starting {facts.name} v{step.version} in {step.color}")
            assert self.manifest is not None and step.color is not None and step.version is not None
            made.candidate = seams.backend.start(
                color=step.color,
                version=step.version,
                model_dir=self._path(facts, step.version),
                sha256=self.manifest.artifact.sha256,
            )
        elif step.name == StepName.READY:
            assert made.candidate is not None and self.manifest is not None
            ready = checks.wait_ready(
                seams.backend, seams.probes, seams.clock, made.candidate, self.manifest, self.settings.ready_timeout
            )
            say(f"{step.action}: {ready}")
        elif step.name == StepName.SMOKE:
            if made.candidate is None:  # the idle slot already runs this version: check it as it is
                assert step.color is not None and step.version is not None
                say(f"{step.action}: reusing the running {step.color} instance of v{step.version}")
                made.candidate = facts.slots[step.color]
                self.manifest = self._manifest(facts, step.version)
            assert self.manifest is not None
            smoke = seams.probes.smoke(made.candidate, self.manifest)
            say(f"{step.action}: smoke: {smoke}")
            problem = checks.claimed_holds(self.manifest, smoke)
            if problem is not None:
                raise CheckFailed(StepName.SCORE, problem)
        elif step.name == StepName.GATE:
            self._gate(facts, step)
        elif step.name == StepName.EVIDENCE:
            self._evidence(facts, step)
        elif step.name == StepName.SPEED:
            self._speed(facts, step, made)
        elif step.name == StepName.ROUTER:
            assert made.candidate is not None
            made.router = seams.router.start(made.candidate.socket)
        elif step.name == StepName.FLIP:
            self._flip(facts, step)
        elif step.name == StepName.WEIGH:
            self._weigh(facts, step)
        elif step.name == StepName.FAILOVER:
            assert facts.router is not None and step.color is not None and facts.active is not None
            say(f"heal: the live slot {facts.active} is down; traffic goes to {step.color} (v{step.version}) meanwhile")
            seams.router.point_to(facts.router, facts.slots[step.color].socket)
            live = facts.slots[facts.active]
            seams.store.record(
                Event(
                    Verb.HEAL,
                    "repaired",
                    live.version,
                    step.version,
                    StepName.FAILOVER,
                    f"live v{live.version} is down",
                )
            )
        elif step.name == StepName.RETIRE:
            assert step.handle is not None and facts.active is not None
            left = repair.retire(facts.slots[facts.active], seams)
            if left:
                say(f"{step.action}: warning: v{step.version} still had {left} router connection(s) after 5 s")
        elif step.name == StepName.COMMIT:
            return self._commit(step, facts, made)
        elif step.name == StepName.STOP:
            assert step.handle is not None
            if step.action == Verb.STAGE:
                say(f"stage: stopping the old {step.color} instance (v{step.version})")
            seams.backend.stop(step.handle)
            made.stopped += 1
        elif step.name == StepName.STOP_ROUTER:
            assert step.handle is not None
            if facts.router is not None and facts.router.handle == step.handle:
                seams.router.stop(facts.router)
            else:
                seams.router.remove_stray(step.handle)
            made.stopped += 1
        elif step.name == StepName.ENSURE_ROUTER:
            return self._ensure_router(facts, step, made)
        else:
            raise ValueError(f"unknown step {step.name!r}")
        return facts

    def _path(self, facts: Facts, version: int) -> Path:
        assert facts.name is not None
        return registry.version_dir(self.settings.models_dir, facts.name, version)

    def _manifest(self, facts: Facts, version: int) -> Manifest:
        assert facts.name is not None
        return registry.manifest(self.settings.models_dir, facts.name, version, self.settings.trust())

    def _verify(self, facts: Facts, step: Step) -> Manifest:
        assert step.version is not None
        path = self._path(facts, step.version)
        try:
            manifest = verify(path, self.settings.trust())
        except ArtifactError as exc:
            raise CheckFailed(StepName.VERIFY, str(exc)) from None
        if not manifest.golden:
            # Without them neither the warm-up nor the smoke test can run: a model that fails on every
            # request would reach live traffic unchecked.
            raise CheckFailed(StepName.VERIFY, f"{path} has no golden rows: nothing to smoke-test it with; retrain it")
        return manifest

    def _gate(self, facts: Facts, step: Step) -> None:
        assert step.version is not None
        if self.manifest is None or self.manifest.version != step.version:  # a staged slot's, at a promote
            self.manifest = self._manifest(facts, step.version)
        live = facts.slot(facts.active)
        decision = checks.gate(
            self.manifest, self._manifest(facts, live.version) if live else None, self.settings.gate_tolerance
        )
        if not decision.passed and not step.forced:
            raise CheckFailed(StepName.GATE, decision.reason + " (use --force to override)")
        self.seams.say(f"{step.action}: gate: {'FORCED past: ' if not decision.passed else ''}{decision.reason}")

    def _evidence(self, facts: Facts, step: Step) -> None:
        """What the candidate did with copies of live traffic, held to the rules (--force overrides)."""
        say = self.seams.say
        assert step.color is not None
        if facts.shadow is None:
            say(f"{step.action}: evidence: none (staged with --no-shadow): the deploy rests on the offline gate")
            return
        found = shadow.evidence(self.settings, facts.slots[step.color])
        broken = evidence.judge(found, self.settings)
        if broken is not None and not step.forced:
            raise CheckFailed(
                StepName.EVIDENCE, f"shadow evidence: {broken} (`release evidence` shows it; --force overrides)"
            )
        verdict = f"FORCED past: {broken}" if broken is not None else evidence.summary(found)
        self.evidence = f"evidence: {verdict}"
        say(f"{step.action}: {self.evidence}")
        self._live_labels(facts, step)

    def _live_labels(self, facts: Facts, step: Step) -> None:
        """The CD4ML rule on the users' own requests (``SWITCHYARD_QUALITY_GATE``): the candidate's
        shadow answers against live's, on the same labelled requests (--force overrides)."""
        settings = self.settings
        live, candidate = facts.slot(facts.active), facts.slots[step.color or ""]
        if settings.quality_gate == "off" or live is None:
            return
        outcomes = predictions.paired(settings, (candidate.version, candidate.color), (live.version, live.color))
        found = quality.paired(outcomes, settings.quality_alpha)
        confidence = 1 - settings.quality_alpha
        refused = quality.gate(found, settings.quality_gate, settings.quality_margin, confidence)
        if refused is not None and not step.forced:
            raise CheckFailed(StepName.EVIDENCE, f"{refused} (--force overrides)")
        said = f"FORCED past: {refused}" if refused else found.words(confidence)
        self.seams.say(f"{step.action}: live labels: {said}")

    def _speed(self, facts: Facts, step: Step, made: Made) -> None:
        """Much slower than live on the same rows is refused (--max-slowdown): users would feel it.
        Paired timings, so that a busy machine slows both sides of each comparison alike."""
        live = facts.slot(facts.active)
        assert made.candidate is not None and self.manifest is not None and live is not None
        factor = self.settings.max_slowdown
        pairs = self.seams.probes.paired_latency(made.candidate, live, self.manifest)
        refused, verdict = checks.speed(pairs, factor, self.settings.analysis_alpha)
        if refused and not step.forced:
            raise CheckFailed(StepName.SPEED, f"{verdict} (--max-slowdown; --force overrides)")
        self.seams.say(f"{step.action}: speed: {'FORCED past: ' if refused else ''}{verdict}")

    def _flip(self, facts: Facts, step: Step) -> None:
        assert facts.router is not None and facts.active is not None and step.color is not None
        router, target = self.seams.router, facts.slots[step.color]
        self.flip_started = self.seams.clock.monotonic()
        router.point_to(facts.router, target.socket)
        if router.current(facts.router) != target.socket:
            raise NeedsOperator(
                f"the router did not take the flip to {step.color}; live traffic left on {facts.active}"
            )

    def _weigh(self, facts: Facts, step: Step) -> None:
        """The canary's share of new requests; at 0%, the flip back waits until the canary has let go
        of the router's connections, as a flip does."""
        assert step.color is not None
        repair.steer(facts, self.seams, step.color, step.weight)
        if step.weight == 0:
            checks.wait_retired(self.seams.probes, self.seams.clock, facts.slots[step.color])
        self.seams.say(f"{step.action}: v{step.version} ({step.color}) takes {step.weight}% of live traffic")

    def _commit(self, step: Step, facts: Facts, made: Made) -> Facts:
        after = leaves(step, facts, made)
        if after.rollout is not None and after.rollout != facts.rollout:
            after = after.replace(rollout=dataclasses.replace(after.rollout, started_at=self.seams.clock.time()))
        live = facts.slot(facts.active)
        from_version = live.version if live else None
        if step.action == Verb.UP:
            assert made.router is not None
            reason = f"router {made.router.kind} at {made.router.url}"
        elif step.action == Verb.STAGE:
            reused = made.candidate is not None and made.candidate == facts.slots.get(step.color or "")
            assert made.candidate is not None
            reason = "reused the running instance" if reused else f"preview at {made.candidate.url}"
        elif step.action == Verb.DOWN:
            reason = f"stopped {made.stopped} process(es)"
        elif step.action == Verb.CANARY:
            assert isinstance(step.rollout, Canary)
            where = f"{step.weight or step.rollout.weight}% of live traffic (step {step.rollout.step + 1} of "
            reason = where + f"{len(step.rollout.steps)}, {step.rollout.step_seconds:g} s each)"
            reason += f"; {step.reason}" if step.reason else ""
        elif step.action in (Verb.ABORT, Verb.WATCH):
            reason = step.reason
        elif step.action == Verb.HEAL:
            assert made.candidate is not None
            reason = f"restarted v{step.version} in {step.color} (it was not running)"
        elif step.reason:
            reason = step.reason
        else:
            elapsed = (self.seams.clock.monotonic() - self.flip_started) * 1000
            reason = f"router flipped in {elapsed:.1f} ms"
        if self.evidence and step.action in (Verb.PROMOTE, Verb.CANARY):
            reason += f"; {self.evidence}"
        to_version = None if step.action == Verb.DOWN else step.version
        if step.action == Verb.ABORT:  # traffic goes from the canary's version back to live's
            from_version, to_version = step.version, from_version
        event = Event(step.action, "ok", from_version, to_version, None, reason, step.forced)
        self.seams.store.save(after, event)
        return after

    def _ensure_router(self, facts: Facts, step: Step, made: Made) -> Facts:
        assert facts.active is not None
        live = facts.slots[facts.active]
        router = self.seams.router
        if facts.router is None or not router.alive(facts.router):
            facts = facts.replace(router=router.start(live.socket))
            self.seams.store.save(
                facts, Event(step.action, "repaired", live.version, live.version, StepName.ROUTER, "router restarted")
            )
            made.notes.append("restarted the router")
        else:
            router.refresh(facts.router)
        assert facts.router is not None
        repair.route(facts, self.seams)
        return facts
