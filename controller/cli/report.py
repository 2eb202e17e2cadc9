"""What the CLI prints for `status`, `history` and `evidence` (``--json`` prints the data as it is)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from controller.core import evidence as shadow_evidence
from controller.settings import ControllerSettings

if TYPE_CHECKING:
    from controller.run.deployment import Deployment


def _short(handle: str) -> str:
    """A pid, or a container id's first 12 characters."""
    return handle.split(":")[0][:12]


def print_quality(quality: dict[str, Any]) -> None:
    """Each version's live accuracy (``release quality``, and the end of ``status``)."""
    if quality.get("problem"):
        print(f"quality: {quality['problem']}")
    for version in quality["versions"]:
        print(f"quality: {version['words']}")
    if quality["paired"]:
        paired = quality["paired"]
        print(f"paired: v{paired['candidate']} against live v{paired['live']}: {paired['words']}")
    if quality.get("drift"):
        print(f"drift:  {quality['drift']['words']}")


def print_status(status: dict[str, Any]) -> None:
    if status.get("state_problem"):
        print(f"state:  {status['state_problem']}")
    print(f"phase:  {status['phase']}: {status['reason']}")
    router = status["router"]
    if router:
        state = f"-> {router['target'] or 'nothing'}" if router["alive"] else "NOT RUNNING"
        print(f"router: {router['url']} ({router['kind']}, {_short(router['handle'])}) {state}")
    for slot in status["slots"]:
        health = "ready" if slot["ready"] else "alive, not ready" if slot["alive"] else "NOT RUNNING"
        print(
            f"  {slot['color']:<6} {slot['role']:<9} {status['name']} v{slot['version']:<4} {slot['url']:<24} "
            f"{health:<16} up {shadow_evidence.duration(slot['age_seconds'], gap=''):<6} {_short(slot['handle'])}"
        )
        if slot["alive"] and not slot["ready"] and slot.get("problem"):
            print(f"         not ready: {slot['problem']}")
        if slot["last_log"]:
            print(
                "         last log lines:\n" + "\n".join("           " + line for line in slot["last_log"].splitlines())
            )
    rollout = status.get("rollout")
    if rollout and rollout["kind"] == "canary":
        steps = " -> ".join(f"{w}%" for w in rollout["steps"])
        print(
            f"canary: v{rollout['version']} ({rollout['color']}) at {rollout['weight']}% (the router sends it "
            f"{rollout['router_share']}%), step {rollout['step']} of {len(rollout['steps'])} ({steps}), "
            f"at least {rollout['seconds_left']:g} s left in this step"
        )
    elif rollout:
        print(f"watch:  v{rollout['version']} ({rollout['color']}) is watched for {rollout['seconds_left']:g} s more")
    if rollout and rollout.get("analysis"):
        print(f"        analysis: {rollout['analysis']['words']}")
    agent = status.get("agent")
    if agent and agent["needed"]:
        what = "watches and supervises" if agent["supervise"] else "watches"
        print(f"agent:  {what}" if agent["running"] else "agent:  NOT RUNNING (the next command starts it again)")
    if status.get("shadow"):
        print(f"shadow: {status['shadow']} (`release evidence` for the comparison)")
    if status.get("quality"):
        print_quality(status["quality"])
    print(f"run dir: {status['run_dir']}")


def print_history(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no history yet")
    for row in rows:
        versions = f"v{row['from_version'] or '-'} -> v{row['to_version'] or '-'}"
        step = f" at {row['step']}" if row["step"] else ""
        forced = " FORCED" if row["forced"] else ""
        actor = f"  [{row['actor']}]" if row.get("actor") else ""
        print(
            f"{row['at']}  {row['action']:<8} {row['outcome']:<8} {versions:<12}{step}{forced}  {row['reason']}{actor}"
        )


def evidence(deployment: Deployment, settings: ControllerSettings, *, as_json: bool) -> int:
    """`release evidence`: exit 0 whether or not the rules pass (the promote is where they bite)."""
    facts, found = deployment.evidence()
    staged, live = facts.slot(facts.staged), facts.slot(facts.active)
    if staged is None or live is None:
        message = "nothing is staged: `release stage VERSION` starts a candidate with shadow traffic"
    elif found is None:
        message = f"v{staged.version} is staged without shadow traffic (--no-shadow): stage it again to gather evidence"
    else:
        verdict = shadow_evidence.judge(found, settings)
        if as_json:
            data = shadow_evidence.as_json(found, settings) | {
                "model": facts.name,
                "candidate_version": staged.version,
                "live_version": live.version,
                "shadow": {"percent": facts.shadow.percent, "rate": facts.shadow.rate} if facts.shadow else None,
                "gate": {"passes": verdict is None, "reason": verdict},
            }
            print(json.dumps(data, indent=2))
            return 0
        since = datetime.fromtimestamp(found.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if found.since else "-"
        versions = f"v{staged.version} (staged, {staged.color}) vs v{live.version} (live)"
        header = f"evidence: {facts.name} {versions}, since {since}"
        print("\n".join(shadow_evidence.render(found, header, settings)))
        return 0
    print(json.dumps({"evidence": None, "reason": message}) if as_json else f"evidence: {message}")
    return 0
