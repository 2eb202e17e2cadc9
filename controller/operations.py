"""The release operations: up, stage, promote, rollback, down, and the repair every one starts with.

Each mutating command runs under the run dir's lock and follows the same rhythm: load the facts,
repair what a crashed command left behind, check the (phase x command) table, act, and write the new
facts once, in one transaction, with their history lines. While a candidate is being started and
checked, the facts carry an ``Op`` naming it and the step it reached, so a controller killed at any
point leaves a state that ``status`` reports and the next command repairs: a half-started candidate
is stopped, a flip that reached the router is completed, one that did not is undone.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller import checks, lock, procs
from controller.backends import make_backend
from controller.backends.base import Backend
from controller.errors import CheckFailed, NeedsOperator, Refused, SwitchyardError, UsageError
from controller.phase import Observed, Phase, derive_phase, refusal
from controller.routers import make_router
from controller.routers.base import RouterDriver
from controller.settings import ControllerSettings
from controller.state import Event, Facts, Instance, Op, Store, other
from service.artifact import ArtifactError, Manifest, read_manifest, resolve, verify

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Deployment:
    def __init__(
        self,
        settings: ControllerSettings,
        *,
        backend: Backend | None = None,
        say: Say = _stderr,
    ) -> None:
        self.settings = settings
        self.backend = backend or make_backend(settings)
        self.say = say
        self.store = Store(settings.run_dir / "state.db")
        self._routers: dict[str, RouterDriver] = {}

    # ------------------------------------------------------------------ helpers

    def router_driver(self, facts: Facts) -> RouterDriver:
        kind = facts.router.kind if facts.router else self._default_router_kind()
        if kind not in self._routers:
            self._routers[kind] = make_router(self.settings, kind)
        return self._routers[kind]

    def _default_router_kind(self) -> str:
        return "docker-nginx" if self.settings.backend == "docker" else self.settings.resolved_router()

    def manifest(self, name: str, version: int) -> Manifest:
        try:
            return read_manifest(resolve(self.settings.models_dir, name, version))
        except ArtifactError as exc:
            raise UsageError(str(exc)) from None

    def _checkpoint(self, step: str) -> None:
        """A seam for crash tests: with SWITCHYARD_PAUSE_AT=<step> the command stops here so a test
        can kill -9 it at a known point."""
        if os.environ.get("SWITCHYARD_PAUSE_AT") == step:
            print(f"paused at {step}", flush=True)
            time.sleep(120)

    # ------------------------------------------------------------------ observation

    def observe(self, facts: Facts) -> Observed:
        ready: dict[str, bool] = {}
        alive: dict[str, bool] = {}
        for color, slot in facts.slots.items():
            alive[color] = self.backend.alive(slot.handle)
            ready[color] = alive[color] and checks.probe(slot, self.manifest_for(facts, slot)) is None
        router_alive = False
        target = None
        strays = len(self._stray_instances(facts))
        if facts.router:
            driver = self.router_driver(facts)
            router_alive = driver.alive(facts.router)
            target = driver.current(facts.router) if router_alive else None
        strays += len(self.router_driver(facts).stray(facts.router))
        return Observed(ready=ready, alive=alive, router_alive=router_alive, router_target=target, strays=strays)

    def manifest_for(self, facts: Facts, slot: Instance) -> Manifest:
        assert facts.name is not None
        return self.manifest(facts.name, slot.version)

    def _stray_instances(self, facts: Facts) -> list[str]:
        known = {slot.handle for slot in facts.slots.values()}
        if facts.op and facts.op.candidate:
            known.add(facts.op.candidate.handle)
        return [found.handle for found in self.backend.running() if found.handle not in known]

    # ------------------------------------------------------------------ repair

    def repair(self, facts: Facts) -> Facts:
        """Bring what runs in line with the facts; finish or undo an interrupted operation."""
        events: list[Event] = []
        if facts.op is not None:
            facts, event = self._finish_interrupted(facts, facts.op)
            events.append(event)
        for handle in self._stray_instances(facts):
            self.say(f"repair: stopping a stray instance ({handle}) that no slot accounts for")
            self.backend.stop(handle)
            events.append(Event("repair", "repaired", reason=f"stopped stray instance {handle}"))
        for handle in self.router_driver(facts).stray(facts.router):
            self.say(f"repair: stopping a stray router ({handle})")
            self.router_driver(facts).remove_stray(handle)
            events.append(Event("repair", "repaired", reason=f"stopped stray router {handle}"))
        if events:
            self.store.save(facts, *events)
        return facts

    def _finish_interrupted(self, facts: Facts, op: Op) -> tuple[Facts, Event]:
        candidate = op.candidate
        driver = self.router_driver(facts)

        def repaired(reason: str) -> Event:
            return Event(op.action, "repaired", self._version(facts, facts.active), op.version, op.step, reason)

        routed = (
            facts.router is not None and candidate is not None and (driver.current(facts.router) == candidate.socket)
        )
        if op.step == "flip" and routed:
            # The router already sends traffic to the candidate, which passed every check: roll forward.
            done = facts.replace(active=op.color, previous=facts.active, staged=None, op=None)
            self.say(f"repair: completing the interrupted {op.action}: {op.color} (v{op.version}) is live")
            return done, repaired("interrupted after the router flipped; completed")
        if op.step == "flip" and facts.router is not None and facts.active is not None:
            driver.point_to(facts.router, facts.slots[facts.active].socket)  # undo a partial flip
            self.say(f"repair: the interrupted {op.action} never reached the router; live traffic unchanged")
            return facts.replace(op=None), repaired("interrupted before the flip took effect")
        if candidate is not None and candidate not in facts.slots.values():
            self.backend.stop(candidate.handle)
        self.say(f"repair: stopped the half-started {op.action} of v{op.version} (it had reached {op.step!r})")
        return facts.replace(op=None), repaired(
            f"interrupted at step {op.step!r}; candidate stopped, live traffic unchanged"
        )

    @staticmethod
    def _version(facts: Facts, color: str | None) -> int | None:
        slot = facts.slot(color)
        return slot.version if slot else None

    def _begin(self, command: str) -> Facts:
        facts = self.repair(self.store.load())
        phase, _ = derive_phase(facts, self.observe(facts)) if facts.active else (Phase.ABSENT, "")
        reason = refusal(phase, command)
        if reason:
            raise Refused(reason)
        return facts

    # ------------------------------------------------------------------ starting and checking a candidate

    def _start_checked(self, facts: Facts, action: str, color: str, version: int, force: bool) -> Instance:
        """Start ``version`` in ``color``, wait for readiness, smoke-test and gate it. On any failure the
        candidate is stopped, the failure recorded, and live traffic untouched."""
        assert facts.name is not None
        name = facts.name
        live = facts.slot(facts.active)
        live_version = live.version if live else None
        try:
            path = resolve(self.settings.models_dir, name, version)
        except ArtifactError as exc:
            raise UsageError(str(exc)) from None
        try:
            manifest = verify(path)
        except ArtifactError as exc:
            self.store.record(Event(action, "failed", live_version, version, "verify", str(exc), force))
            raise CheckFailed("verify", str(exc)) from None

        op = Op(action=action, color=color, version=version, step="start", forced=force)
        self.store.save(facts.replace(op=op))
        self._checkpoint("start")
        self.say(f"{action}: starting {name} v{version} in {color}")
        candidate = self.backend.start(color=color, version=version, model_dir=path, sha256=manifest.artifact.sha256)
        self.store.save(facts.replace(op=Op(action, color, version, "ready", candidate, force)))
        self._checkpoint("ready")
        try:
            self.say(f"{action}: {checks.wait_ready(self.backend, candidate, manifest, self.settings.ready_timeout)}")
            self._check(facts, action, color, candidate, manifest, force)
        except SwitchyardError as exc:
            self.backend.stop(candidate.handle)
            step = exc.step if isinstance(exc, CheckFailed) else "start"
            self.store.save(
                facts.replace(op=None), Event(action, "failed", live_version, version, step, str(exc), force)
            )
            raise
        except BaseException:
            self.backend.stop(candidate.handle)
            self.store.save(facts.replace(op=None))
            raise
        return candidate

    def _check(
        self, facts: Facts, action: str, color: str, candidate: Instance, manifest: Manifest, force: bool
    ) -> None:
        """Smoke test and evaluation gate for a ready candidate (a reused instance goes through them too)."""
        self.store.save(facts.replace(op=Op(action, color, manifest.version, "smoke", candidate, force)))
        self._checkpoint("smoke")
        self.say(f"{action}: smoke: {checks.smoke(candidate, manifest)}")
        self.store.save(facts.replace(op=Op(action, color, manifest.version, "gate", candidate, force)))
        self._checkpoint("gate")
        live = facts.slot(facts.active)
        decision = checks.gate(manifest, self.manifest_for(facts, live) if live else None, self.settings.gate_tolerance)
        if not decision.passed and not force:
            raise CheckFailed("gate", decision.reason + " (use --force to override)")
        self.say(f"{action}: gate: {'FORCED past: ' if not decision.passed else ''}{decision.reason}")

    # ------------------------------------------------------------------ commands

    def up(self, name: str, version: int) -> str:
        with lock.exclusive(self.settings.run_dir, "up", self.settings.lock_timeout):
            facts = self.store.load()
            if facts.active is None and facts.op is None:
                # Before repair, which would stop what no fact accounts for: compose's router and blue.
                adopted = self._adopt(name, version)
                if adopted:
                    return adopted
            facts = self.repair(facts)
            if facts.active is not None:
                return self._already_up(facts, name, version)
            if not procs.port_free(self.settings.router_host, self.settings.router_port):
                raise UsageError(
                    f"port {self.settings.router_port} on {self.settings.router_host} is in use; "
                    "choose another with --port"
                )
            self.manifest(name, version)
            facts = Facts(name=name)
            candidate = self._start_checked(facts, "up", "blue", version, force=False)
            self._checkpoint("router")
            driver = self.router_driver(facts)
            try:
                router = driver.start(candidate.socket)
            except SwitchyardError as exc:
                self.backend.stop(candidate.handle)
                self.store.save(Facts(), Event("up", "failed", None, version, "router", str(exc)))
                raise
            done = Facts(name=name, active="blue", slots={"blue": candidate}, router=router)
            self.store.save(done, Event("up", "ok", None, version, reason=f"router {driver.kind} at {router.url}"))
            return f"up: {name} v{version} is live at {router.url}/predict (router: {driver.kind})"

    def _adopt(self, name: str, version: int) -> str | None:
        """Take over a deployment started outside the controller (`docker compose up`): its router and
        its one instance become this deployment's facts, after the same readiness and smoke checks."""
        facts = Facts(name=name)
        driver = self.router_driver(facts)
        routers = driver.stray(None)
        found = [f for f in self.backend.running() if self.backend.alive(f.handle)]
        if len(routers) != 1 or len(found) != 1:
            return None
        if found[0].version != version:
            raise UsageError(
                f"a running {found[0].color} instance serves v{found[0].version}, not v{version}: "
                f"run `up {name} {found[0].version}` to adopt it, or `down` first"
            )
        manifest = self.manifest(name, version)
        instance = self.backend.adopt(found[0], manifest.artifact.sha256)
        router = driver.adopt(routers[0])
        if instance is None or router is None:
            return None
        self.say(f"up: adopting the running {instance.color} instance (v{version}) and its router")
        self.say(f"up: {checks.wait_ready(self.backend, instance, manifest, self.settings.ready_timeout)}")
        self.say(f"up: smoke: {checks.smoke(instance, manifest)}")
        driver.point_to(router, instance.socket)
        done = Facts(name=name, active=instance.color, slots={instance.color: instance}, router=router)
        self.store.save(
            done, Event("up", "ok", None, version, reason=f"adopted the running deployment at {router.url}")
        )
        return f"up: adopted {name} v{version}, live at {router.url}/predict (router: {driver.kind})"

    def _already_up(self, facts: Facts, name: str, version: int) -> str:
        assert facts.active is not None
        live = facts.slots[facts.active]
        notes = []
        driver = self.router_driver(facts)
        if facts.router is None or not driver.alive(facts.router):
            router = driver.start(live.socket)
            facts = facts.replace(router=router)
            self.store.save(facts, Event("up", "repaired", live.version, live.version, "router", "router restarted"))
            notes.append("restarted the router")
        else:
            driver.refresh(facts.router)
            driver.point_to(facts.router, live.socket)
        if (facts.name, live.version) != (name, version):
            notes.append(f"use `release.py promote {version}` to release v{version}")
        assert facts.router is not None
        extra = f" ({'; '.join(notes)})" if notes else ""
        return f"up: already up: {facts.name} v{live.version} is live at {facts.router.url}/predict{extra}"

    def stage(self, version: int, *, force: bool = False) -> str:
        with lock.exclusive(self.settings.run_dir, "stage", self.settings.lock_timeout):
            facts = self._begin("stage")
            facts, candidate = self._stage(facts, version, force, "stage")
            return (
                f"stage: {facts.name} v{version} is staged in {candidate.color} at {candidate.url} "
                f"(preview); live traffic still goes to v{self._version(facts, facts.active)}"
            )

    def _stage(self, facts: Facts, version: int, force: bool, action: str) -> tuple[Facts, Instance]:
        assert facts.active is not None
        if self._version(facts, facts.active) == version:
            raise Refused(f"cannot {action}: v{version} is already live in {facts.active}")
        idle = other(facts.active)
        existing = facts.slot(idle)
        live_version = self._version(facts, facts.active)
        if self._reusable(facts, existing, version):
            assert existing is not None
            self.say(f"{action}: reusing the running {idle} instance of v{version}")
            try:
                self._check(facts, action, idle, existing, self.manifest_for(facts, existing), force)
            except CheckFailed as exc:
                failed = Event(action, "failed", live_version, version, exc.step, str(exc), force)
                self.store.save(facts.replace(op=None), failed)
                raise
            candidate, reason = existing, "reused the running instance"
        else:
            candidate = self._start_checked(facts, action, idle, version, force)
            reason = f"preview at {candidate.url}"
        staged = facts.replace(slots={**facts.slots, idle: candidate}, staged=idle, previous=None, op=None)
        self.store.save(staged, Event(action, "ok", live_version, version, reason=reason, forced=force))
        if existing is not None and existing != candidate:
            self.say(f"{action}: stopping the old {idle} instance (v{existing.version})")
            self.backend.stop(existing.handle)
        return staged, candidate

    def _reusable(self, facts: Facts, existing: Instance | None, version: int) -> bool:
        """The idle slot already runs ``version``, alive, ready and with the right identity."""
        if existing is None or existing.version != version or not self.backend.alive(existing.handle):
            return False
        return checks.probe(existing, self.manifest_for(facts, existing)) is None

    def promote(self, version: int | None = None, *, force: bool = False) -> str:
        command = "promote" if version is None else "promote VERSION"
        with lock.exclusive(self.settings.run_dir, "promote", self.settings.lock_timeout):
            facts = self._begin(command)
            assert facts.active is not None
            if version is not None:
                if self._version(facts, facts.active) == version:
                    return f"promote: v{version} is already live; nothing to do"
                if not (facts.staged and self._version(facts, facts.staged) == version):
                    # The one-button path: stage (recorded as its own history line), then flip.
                    facts, _ = self._stage(facts, version, force, "stage")
            if facts.staged is None:
                raise Refused(refusal(Phase.HEALTHY, "promote") or "nothing is staged")
            return self._flip(facts, facts.staged, "promote", force)

    def rollback(self) -> str:
        with lock.exclusive(self.settings.run_dir, "rollback", self.settings.lock_timeout):
            facts = self._begin("rollback")
            target = facts.previous
            if target is None or facts.slot(target) is None:
                held = (
                    f"; {facts.staged} holds the staged v{self._version(facts, facts.staged)}" if facts.staged else ""
                )
                raise Refused(f"cannot rollback: there is no previous slot to flip back to{held}")
            return self._flip(facts, target, "rollback", False)

    def _flip(self, facts: Facts, target: str, action: str, force: bool) -> str:
        assert facts.active is not None and facts.router is not None
        slot = facts.slots[target]
        problem = checks.probe(slot, self.manifest_for(facts, slot))
        if problem is not None:
            reason = f"{target} (v{slot.version}) is not healthy ({problem}); refusing to flip to it"
            self.store.record(
                Event(action, "refused", self._version(facts, facts.active), slot.version, "ready", reason, force)
            )
            raise Refused(f"cannot {action}: {reason}")
        self.store.save(facts.replace(op=Op(action, target, slot.version, "flip", slot, force)))
        self._checkpoint("flip")
        driver = self.router_driver(facts)
        started = time.perf_counter()
        driver.point_to(facts.router, slot.socket)
        if driver.current(facts.router) != slot.socket:
            driver.point_to(facts.router, facts.slots[facts.active].socket)
            self.store.save(facts.replace(op=None))
            raise NeedsOperator(f"the router did not take the flip to {target}; live traffic left on {facts.active}")
        # Routers that pool upstream connections (nginx) would keep sending requests over the old
        # instance's open connections: have it close them, and return only once it has.
        old = facts.slots[facts.active]
        self.backend.close_router_connections(old.handle)
        left = checks.wait_router_connections_closed(old)
        elapsed = (time.perf_counter() - started) * 1000
        if left:
            self.say(f"{action}: warning: v{old.version} still had {left} router connection(s) after 5 s")
        self._checkpoint("commit")
        from_version = self._version(facts, facts.active)
        done = facts.replace(active=target, previous=facts.active, staged=None, op=None)
        self.store.save(
            done,
            Event(action, "ok", from_version, slot.version, reason=f"router flipped in {elapsed:.1f} ms", forced=force),
        )
        return (
            f"{action}: {facts.name} v{slot.version} ({target}) is live at {facts.router.url}; "
            f"v{from_version} ({facts.active}) keeps running as the rollback target"
        )

    def down(self) -> str:
        with lock.exclusive(self.settings.run_dir, "down", self.settings.lock_timeout):
            facts = self.store.load()
            stopped = 0
            if facts.router:
                self.router_driver(facts).stop(facts.router)
                stopped += 1
            for handle in self.router_driver(facts).stray(facts.router):
                self.router_driver(facts).remove_stray(handle)
                stopped += 1
            handles = {slot.handle for slot in facts.slots.values()}
            if facts.op and facts.op.candidate:
                handles.add(facts.op.candidate.handle)
            handles.update(found.handle for found in self.backend.running())
            for handle in handles:
                self.backend.stop(handle)
                stopped += 1
            if stopped == 0 and facts == Facts():
                return "down: nothing runs in this deployment"
            self.store.save(
                Facts(),
                Event("down", "ok", self._version(facts, facts.active), None, reason=f"stopped {stopped} process(es)"),
            )
            return f"down: stopped {stopped} process(es); history is kept in {self.settings.run_dir / 'state.db'}"

    # ------------------------------------------------------------------ reading

    def status(self) -> dict[str, Any]:
        facts = self.store.load()
        observed = self.observe(facts)
        phase, reason = derive_phase(facts, observed)
        now = time.time()
        slots = []
        for color in ("blue", "green"):
            slot = facts.slot(color)
            if slot is None:
                continue
            role = (
                "live"
                if color == facts.active
                else "staged"
                if color == facts.staged
                else ("previous" if color == facts.previous else "idle")
            )
            alive = observed.alive.get(color, False)
            slots.append(
                {
                    "color": color,
                    "role": role,
                    "version": slot.version,
                    "handle": slot.handle,
                    "url": slot.url,
                    "alive": alive,
                    "ready": observed.ready.get(color, False),
                    "age_seconds": round(now - slot.started_at, 1),
                    "last_log": None if alive else self.backend.logs(slot.handle, 5),
                }
            )
        router = None
        if facts.router:
            target = next((c for c, s in facts.slots.items() if s.socket == observed.router_target), None)
            router = {
                "kind": facts.router.kind,
                "url": facts.router.url,
                "handle": facts.router.handle,
                "alive": observed.router_alive,
                "target": target,
            }
        return {
            "phase": str(phase),
            "reason": reason,
            "name": facts.name,
            "router": router,
            "slots": slots,
            "interrupted": None
            if facts.op is None
            else {"action": facts.op.action, "version": facts.op.version, "step": facts.op.step},
            "run_dir": str(Path(self.settings.run_dir).resolve()),
        }

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.store.history(limit)
