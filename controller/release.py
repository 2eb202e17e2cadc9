#!/usr/bin/env python3
"""release.py: blue/green releases of model versions behind one stable address.

  up NAME VERSION     start the router and the first instance (idempotent); with no arguments, restore
                      what the state describes (after a reboot, say)
  stage VERSION       the release: start VERSION in the idle slot, check it, leave it at a preview address
  promote [VERSION]   the deploy: flip the router to the staged slot (with VERSION: stage it first)
  rollback            flip back to the previous slot, which is still running
  abort               end a canary (or roll back a watched deploy): every request to the stable slot
  heal                restart what died (router, instances) and point the router where the state says
  evidence            what the staged candidate did with copies of live traffic (shadow)
  status              what runs, checked against reality (--json for scripts)
  quality             each version's live accuracy from the labels sent back, with intervals
  feedback import FILE.csv   true labels by request id (columns request_id,label), all or nothing
  feedback token             the bearer token POST /feedback wants
  retrain --config CONFIG    a new version trained on the data plus the labelled live predictions
  history             every stage / promote / rollback / failure
  down                stop everything this deployment started
  check NAME VERSION --url URL     the checks of a stage, on an instance something else runs
  render kubernetes NAME VERSION   manifests and a script for blue/green on a Kubernetes cluster
  render systemd                   a unit that restores this deployment at boot
  users add|list|remove            console accounts (viewer or deployer)
  console                          the deploy console, a web page (--host, --port, --detach)

Exit codes: 0 done; 1 refused or a check failed (live traffic untouched); 2 usage;
3 the state needs an operator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python controller/release.py`: import from the project root,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # not from controller/ (no stdlib shadowing)

from pydantic import ValidationError

from artifact.options import first_error
from controller.drivers import registry
from controller.drivers.seams import Hooks
from controller.errors import SwitchyardError, UsageError
from controller.settings import ControllerSettings
from controller.vocabulary import StepName

SETTING_OPTIONS = {
    "models_dir": ("--models-dir", "model registry (default: models/) [env SWITCHYARD_MODELS_DIR]"),
    "run_dir": ("--run-dir", "state, logs, router config (default: .switchyard/) [env SWITCHYARD_RUN_DIR]"),
    "router": ("--router", "nginx | builtin | auto (default: auto = nginx if installed) [env SWITCHYARD_ROUTER]"),
    "backend": ("--backend", "process | docker (default: process) [env SWITCHYARD_BACKEND]"),
    "router_port": ("--port", "the router's port (default: 8000) [env SWITCHYARD_ROUTER_PORT]"),
    "router_host": ("--host", "the router's address (default: 127.0.0.1) [env SWITCHYARD_ROUTER_HOST]"),
    "ready_timeout": ("--ready-timeout", "seconds a new instance has to become ready (default: 60)"),
    "gate_tolerance": ("--tolerance", "how much worse the candidate's metric may be (default: 0)"),
    "max_slowdown": ("--max-slowdown", "how many times slower than live a candidate may answer (default: 3)"),
    "instance_workers": ("--workers", "uvicorn workers per instance (default: 1)"),
    "instance_cpu_affinity": (
        "--cpu-affinity",
        "instances' CPU pinning: auto (blue from the first CPU, green from the last), off, or a list "
        "(default: auto for processes, off for containers)",
    ),
    "trusted_keys": ("--trusted-keys", "public keys artifacts must be signed by (default: keys/trusted)"),
    "allow_unsigned": (
        "--allow-unsigned",
        "release unsigned artifacts too: local experiments only [env SWITCHYARD_ALLOW_UNSIGNED]",
    ),
    "trusted_modules": ("--trusted-modules", "more modules a pickle may use, comma-separated (your own model classes)"),
    "notify": ("--notify", "a webhook URL for release events; repeatable [env SWITCHYARD_NOTIFY, comma-separated]"),
    "console_url": ("--console-url", "the console's address, for links in notifications [env SWITCHYARD_CONSOLE_URL]"),
}


SHADOW_OPTIONS = {
    "shadow_percent": ("--shadow-percent", float, "the share of live /predict requests copied to it (default: 100)"),
    "shadow_rate": ("--shadow-rate", float, "copies a second at most, so live never starves (default: 100)"),
}
EVIDENCE_RULES = {
    "shadow_min_requests": ("--shadow-min-requests", int, "compared requests needed (default: 100)"),
    "shadow_min_agreement": ("--shadow-min-agreement", float, "top-1 agreement with live needed (default: 0.5)"),
    "shadow_max_errors": ("--shadow-max-errors", int, "candidate errors allowed on copies (default: 0)"),
    "shadow_max_p99_ratio": ("--shadow-max-p99-ratio", float, "candidate p99 / live p99 allowed (default: 3)"),
}


def _typed(parser: argparse.ArgumentParser, title: str, options: dict[str, tuple[str, Any, str]]) -> None:
    group = parser.add_argument_group(title)
    for dest, (flag, kind, helptext) in options.items():
        group.add_argument(flag, dest=dest, type=kind, help=helptext + f" [env SWITCHYARD_{dest.upper()}]")


def _common(suppress: bool, leave_out: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("deployment options")
    for dest, (flag, helptext) in SETTING_OPTIONS.items():
        if dest in leave_out:
            continue
        default = argparse.SUPPRESS if suppress else None
        action = {"notify": "append", "allow_unsigned": "store_true"}.get(dest, "store")
        group.add_argument(flag, dest=dest, help=helptext, default=default, action=action)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="release.py",
        description=__doc__,
        parents=[_common(False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common(True)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=helptext, parents=[common])

    up = add("up", "start the router on a stable port and the first instance; idempotent")
    up.add_argument("name", nargs="?", help="model name in the registry, e.g. industry (none: restore)")
    up.add_argument("version", nargs="?", help="version number, or 'latest'")
    up.add_argument(
        "--console", type=int, metavar="PORT", help="also start the deploy console, detached, on 127.0.0.1:PORT"
    )

    stage = add("stage", "start VERSION in the idle slot, run readiness, smoke test and gate; no traffic moves")
    stage.add_argument("version", help="version number, or 'latest'")
    stage.add_argument("--force", action="store_true", help="release even if the evaluation gate says no")
    stage.add_argument(
        "--no-shadow", dest="shadow", action="store_false", default=None, help="no copies of live traffic for it"
    )
    _typed(stage, "shadow traffic", SHADOW_OPTIONS)

    promote = add("promote", "flip live traffic to the staged slot; with VERSION, stage it first")
    promote.add_argument("version", nargs="?", help="version to stage and flip to (default: what is staged)")
    promote.add_argument(
        "--force", action="store_true", help="deploy even if the evaluation gate or the shadow evidence says no"
    )
    _typed(promote, "shadow evidence rules", EVIDENCE_RULES)
    rollout = promote.add_argument_group("canary and watch")
    rollout.add_argument(
        "--canary", metavar="WEIGHTS", help="canary steps in percent of live traffic, e.g. 5,25,50,100"
    )
    rollout.add_argument(
        "--step-seconds",
        type=float,
        help="each canary step lasts at least this long (default: 60) [env SWITCHYARD_STEP_SECONDS]",
    )
    rollout.add_argument(
        "--watch-seconds",
        type=float,
        help="watch the new version this long after the deploy and roll back by "
        "itself on a breach (default: 300) [env SWITCHYARD_WATCH_SECONDS]",
    )
    rollout.add_argument("--no-watch", action="store_true", help="no watch after this deploy")

    add("rollback", "flip live traffic back to the previous slot, which is still running")
    add("abort", "end a canary, or roll back a deploy under watch: every request to the stable slot at once")
    add("heal", "restart a dead router or instance and point the router where the state says")
    evidence = add("evidence", "what the staged candidate did with copies of live traffic, and the promote verdict")
    evidence.add_argument("--json", action="store_true", help="machine-readable output")
    _typed(evidence, "shadow evidence rules", EVIDENCE_RULES)
    status = add("status", "the phase, the router and each slot, checked against what really runs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    quality = add("quality", "each version's live accuracy from labelled predictions, and candidate against live")
    quality.add_argument("--json", action="store_true", help="machine-readable output")
    quality.add_argument("--hours", type=float, help="only predictions of the last H hours (default: all kept)")
    feedback = add("feedback", "true labels of earlier predictions, by request id")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    feedback_import = feedback_sub.add_parser(
        "import", help="store labels from a CSV with the columns request_id,label (all or nothing)", parents=[common]
    )
    feedback_import.add_argument("file", type=Path, help="the CSV file")
    feedback_sub.add_parser("token", help="print the bearer token that POST /feedback wants", parents=[common])
    retrain = add("retrain", "train a new version on the config's data plus the labelled live predictions")
    retrain.add_argument("--config", required=True, type=Path, help="the training config, e.g. pipeline/configs/x.toml")
    retrain.add_argument("--hours", type=float, help="only feedback on predictions of the last H hours")
    history = add("history", "every up / stage / promote / rollback / failure, oldest first")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--limit", type=int, help="only the last N entries")
    add("down", "stop the router and every instance of this deployment")

    check = add("check", "readiness with identity, golden rows and the metric gate, on a running instance")
    check.add_argument("name", help="model name in the registry")
    check.add_argument("version", help="the version the instance should serve, or 'latest'")
    check.add_argument("--url", required=True, help="the instance, on loopback, e.g. http://127.0.0.1:18001")
    check.add_argument("--against", help="the live version, for the metric gate (default: no gate)")

    render = add("render", "write what runs this deployment elsewhere")
    render.add_argument(
        "target", choices=["kubernetes", "systemd"], help="kubernetes: manifests and release.sh; systemd: a unit"
    )
    render.add_argument("name", nargs="?", help="kubernetes: model name in the registry")
    render.add_argument("version", nargs="?", help="kubernetes: the version blue serves at first, or 'latest'")
    render.add_argument("--namespace", default="default", help="Kubernetes namespace (default: default)")
    render.add_argument("--replicas", type=int, default=2, help="pods per color once staged (default: 2)")
    render.add_argument(
        "--image", help="the service image, with a fixed tag or digest (default: switchyard-service:<this version>)"
    )
    render.add_argument(
        "--models-source",
        default="pvc:switchyard-models",
        help="pvc:CLAIM (a volume holding the registry; default pvc:switchyard-models) or image:IMAGE "
        "(an init container copies the image's /models)",
    )
    render.add_argument("--out", help="folder to write into (default: k8s/ for kubernetes, . for systemd)")
    render.add_argument("--user", help="systemd: the user the unit runs as (default: the run dir's owner)")

    users = add("users", "console accounts: add, list, remove (passwords from a prompt or stdin)")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    users_add = users_sub.add_parser("add", help="add an account, or set its role and password", parents=[common])
    users_add.add_argument("user", help="the account's name")
    users_add.add_argument("--role", required=True, choices=["viewer", "deployer"], help="viewer or deployer")
    users_sub.add_parser("list", help="every account and its role", parents=[common])
    users_remove = users_sub.add_parser("remove", help="remove an account", parents=[common])
    users_remove.add_argument("user", help="the account's name")

    console = sub.add_parser(
        "console",
        help="the deploy console: a web page to see the evidence, deploy and roll back",
        description="the deploy console: a web page to see the evidence, deploy and roll back",
        parents=[_common(True, leave_out=("router_host", "router_port"))],
    )
    console.add_argument("--host", dest="console_host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    console.add_argument("--port", dest="console_port", type=int, default=8090, help="port (default: 8090)")
    console.add_argument("--detach", action="store_true", help="run in the background until `release down`")
    return parser


def _settings(args: argparse.Namespace) -> ControllerSettings:
    names = [*SETTING_OPTIONS, *SHADOW_OPTIONS, *EVIDENCE_RULES, "shadow"]
    given = {dest: getattr(args, dest) for dest in names if getattr(args, dest, None) is not None}
    if "notify" in given:
        given["notify"] = ",".join(given["notify"])
    try:
        return ControllerSettings(**given)
    except ValidationError as exc:
        key, value, reason = first_error(exc)
        flag = {**SETTING_OPTIONS, **SHADOW_OPTIONS, **EVIDENCE_RULES}.get(key, (f"SWITCHYARD_{key.upper()}",))[0]
        raise UsageError(f"{flag} {value!r}: {reason}") from None


def _version(models_dir: Path, name: str | None, raw: str) -> int:
    if name is None:
        raise UsageError("nothing is up yet; run `release.py up NAME VERSION` first")
    return int(registry.version_dir(models_dir, name, raw).name)


def _canary(raw: str | None) -> tuple[int, ...]:
    """``5,25,50,100`` -> (5, 25, 50, 100): rising percentages; 100 is added when missing."""
    if not raw:
        return ()
    try:
        steps = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise UsageError(f"--canary {raw!r}: expected rising percentages such as 5,25,50,100") from None
    if any(not 0 < w <= 100 for w in steps) or list(steps) != sorted(set(steps)):
        raise UsageError(f"--canary {raw!r}: expected rising percentages between 1 and 100, such as 5,25,50,100")
    return steps if steps[-1] == 100 else (*steps, 100)


def check(args: argparse.Namespace, settings: ControllerSettings) -> int:
    from urllib.parse import urlsplit

    from artifact.manifest import ArtifactError
    from artifact.trust import verify
    from controller.core.facts import Instance
    from controller.drivers.probes import HttpProbes
    from controller.errors import CheckFailed
    from controller.run.checks import check_instance

    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
        raise UsageError(f"--url {args.url!r}: expected http://127.0.0.1:PORT (a port-forward, a preview address)")
    version = _version(settings.models_dir, args.name, args.version)
    try:
        manifest = verify(registry.version_dir(settings.models_dir, args.name, version), settings.trust())
    except ArtifactError as exc:
        raise CheckFailed(StepName.VERIFY, str(exc)) from None
    live = registry.manifest(settings.models_dir, args.name, args.against, settings.trust()) if args.against else None
    instance = Instance("preview", version, "", url.port, "", manifest.artifact.sha256)
    for line in check_instance(HttpProbes(timeout=5.0), instance, manifest, live, settings.gate_tolerance):
        print(f"check: {line}")
    return 0


def read_password(user: str) -> str:
    """From a prompt (twice) on a terminal, else the first line of standard input; never an argument."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def users(args: argparse.Namespace, settings: ControllerSettings) -> int:
    from controller.drivers.users import Accounts

    accounts = Accounts(settings.run_dir)
    if args.users_command == "add":
        accounts.add(args.user, args.role, read_password(args.user))
        print(f"users: {args.user} is a {args.role}")
    elif args.users_command == "remove":
        accounts.remove(args.user)
        print(f"users: removed {args.user}")
    else:
        for user in accounts.list():
            print(f"{user.name:<24} {user.role}")
    return 0


def run(args: argparse.Namespace, hooks: Hooks | None = None) -> int:
    from controller.cli import report
    from controller.run.deployment import Deployment

    settings = _settings(args)
    command = args.command
    if command == "check":
        return check(args, settings)
    if command == "render":
        from controller.cli import render

        return render.run(args, settings)
    if command == "users":
        return users(args, settings)
    if command == "console":
        from controller.console.serve import console

        return console(settings, args.console_host, args.console_port, detach=args.detach)
    deployment = Deployment(settings, hooks=hooks)
    if command == "evidence":
        return report.evidence(deployment, settings, as_json=args.json)
    if command in ("quality", "feedback", "retrain"):
        from controller.cli import feedback

        face = {"quality": feedback.run, "feedback": feedback.feedback, "retrain": feedback.retrain}[command]
        return face(args, settings, deployment)
    if command in ("status", "history"):
        data: Any = deployment.status() if command == "status" else deployment.history(args.limit)
        if command == "status":
            from controller.cli import feedback

            data["quality"] = feedback.readings(settings, deployment, None)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            (report.print_status if command == "status" else report.print_history)(data)
        return 0
    if command == "up":
        if (args.name is None) != (args.version is None):
            raise UsageError("up takes NAME and VERSION, or nothing (restore what the state describes)")
        version = _version(settings.models_dir, args.name, args.version) if args.name else None
        message = deployment.up(args.name, version)
        if args.console:
            from controller.console.serve import console

            print(message)
            return console(settings, "127.0.0.1", args.console, detach=True)
    elif command == "stage":
        name = deployment.store.load().name
        message = deployment.stage(_version(settings.models_dir, name, args.version), force=args.force)
    elif command == "promote":
        name = deployment.store.load().name
        version = _version(settings.models_dir, name, args.version) if args.version else None
        message = deployment.promote(
            version,
            force=args.force,
            canary=_canary(args.canary),
            step_seconds=args.step_seconds,
            watch_seconds=0.0 if args.no_watch else args.watch_seconds,
        )
    elif command == "rollback":
        message = deployment.rollback()
    elif command == "abort":
        message = deployment.abort()
    elif command == "heal":
        message = deployment.heal()
    else:
        from controller.console.serve import stop
        from controller.drivers import agents

        message = deployment.down()
        if agents.stop(settings):
            message += "; stopped the agent"
        if stop(settings):
            message += "; stopped the console"
    print(message)
    return 0


def main(argv: list[str] | None = None, hooks: Hooks | None = None) -> int:
    """The CLI. ``hooks`` is called before each step of a plan (the crash tests stop a command there)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args, hooks)
    except SwitchyardError as exc:
        reason, _, details = str(exc).partition("\n")
        print(f"error: {reason}", file=sys.stderr)
        if details:  # e.g. an instance's last log lines, below the one-line reason
            print("\n".join("  " + line for line in details.splitlines()), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the run dir, the disk, the sockets folder: no traceback, one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check the run dir's permissions and free space", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("error: interrupted; run `release.py status` to see what is left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
