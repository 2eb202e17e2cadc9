"""The project's layers, read from its imports (every import, at module level or inside a function):
a rule broken here is a design decision to make on purpose, not a drift found in review.

Packages: ``artifact`` (the contract) imports no other package of the project; ``pipeline`` and
``service`` import only ``artifact``; ``controller`` imports only ``artifact`` (and the router
program's health path); ``builtin_router`` imports nothing of the project. Inside ``controller``,
each module belongs to one layer and imports only from its own layer or those below it:

    base      controller.errors, .messages, .settings, .vocabulary   (everyone's)
    core      controller/core/       facts, phases, plans, the analysis: no I/O
    drivers   controller/drivers/    processes, containers, routers, the store, probes, files
    run       controller/run/        a command's orchestration: lock, repair, observe, plan, run
    faces     controller/cli/, controller/console/, controller.agent, controller.release

No import cycle anywhere in the project.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from support import ROOT

PACKAGES = ("artifact", "pipeline", "service", "controller", "builtin_router", "bench")
MAY_IMPORT = {
    "artifact": set(),
    "pipeline": {"artifact"},
    "service": {"artifact"},
    "controller": {"artifact", "builtin_router"},  # it starts the router program: its health path
    "builtin_router": set(),
    "bench": {"artifact", "pipeline", "service", "controller", "builtin_router"},
}
LAYERS = ("base", "core", "drivers", "run", "faces")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project's modules it imports (``from a import b``: a.b if that is a module)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in known and t != name)
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    if module in (
        "controller",
        "controller.errors",
        "controller.messages",
        "controller.settings",
        "controller.vocabulary",
    ):
        return "base"
    if parts[1] in ("core", "drivers", "run"):
        return parts[1]
    return "faces"


def test_packages_import_only_what_the_design_allows() -> None:
    graph = imports(modules())
    wrong = [
        f"{a} imports {b}"
        for a, targets in graph.items()
        for b in targets
        if (pa := a.split(".")[0]) != (pb := b.split(".")[0]) and pb not in MAY_IMPORT[pa]
    ]
    assert wrong == []


def test_controller_modules_import_only_their_layer_and_those_below() -> None:
    graph = imports(modules())
    wrong = [
        f"{a} ({layer(a)}) imports {b} ({layer(b)})"
        for a, targets in graph.items()
        if a.startswith("controller")
        for b in targets
        if b.startswith("controller") and LAYERS.index(layer(b)) > LAYERS.index(layer(a))
    ]
    assert wrong == []


def test_the_core_does_no_io() -> None:
    known = modules()
    forbidden = {"os", "subprocess", "socket", "sqlite3", "httpx", "docker", "shutil", "signal", "fcntl"}
    wrong = []
    for name, path in known.items():
        if not name.startswith("controller.core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                roots = (
                    [a.name.split(".")[0] for a in node.names]
                    if isinstance(node, ast.Import)
                    else [(node.module or "").split(".")[0]]
                )
                wrong += [f"{name} imports {r}" for r in roots if r in forbidden]
    assert wrong == []


def test_no_import_cycle_anywhere() -> None:
    graph = imports(modules())
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []
