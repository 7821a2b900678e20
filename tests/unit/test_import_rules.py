"""The package's layering, checked over the source's imports (ast, no import side effects).

Layers, lowest first; a module may import its own layer's package and anything lower, never
higher. ``cloudflared`` and ``cloudflare`` are peers that do not import each other. The
simulator imports only the foundation (the token format and file helpers it shares with the
product), and only the ``demo`` and ``cli`` commands import the simulator. Any cycle between
modules fails, whatever the layers say. TYPE_CHECKING imports count: a cycle that only the type
checker sees is still a tangle a reader has to hold in their head.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tunnelkeeper"

FOUNDATION = {
    "errors",
    "atomicfile",
    "tunneltoken",
    "alertcatalog",
    "logconfig",
    "metrics",
    "tasks",
    "httpreply",
    "promtext",
    "noopenssl",
    "structs",
    "",
}
RANK = {
    "foundation": 0,
    "config": 1,
    "sources": 2,
    "supervise": 3,
    "alerts": 4,
    "cloudflared": 5,
    "cloudflare": 5,
    "service": 6,
    "commands": 7,
}
COMMANDS = {"cli", "check", "demo", "__main__"}


def layer_of(module: str) -> str:
    """'tunnelkeeper.supervise.policy' -> 'supervise'; top-level modules by the sets above."""
    parts = module.split(".")[1:]
    head = parts[0] if parts else ""
    if head == "sim":
        return "sim"
    if head in RANK:
        return head
    if head in COMMANDS:
        return "commands"
    if head in FOUNDATION:
        return "foundation"
    raise AssertionError(f"{module}: top-level module in no layer; place it in a package")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, path.name == "__init__.py", node)
                # "from pkg import mod" names a module when mod is one
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                if target == "tunnelkeeper" or target.startswith("tunnelkeeper."):
                    while target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        graph[name].add(target)
        graph.setdefault(name, set())
    return graph


GRAPH = imports_of()


def test_every_module_is_in_a_layer() -> None:
    for module in GRAPH:
        layer_of(module)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for importer, targets in GRAPH.items():
        src = layer_of(importer)
        for target in targets:
            dst = layer_of(target)
            if src == "sim" or dst == "sim":
                allowed = (src == "sim" and dst in ("sim", "foundation")) or (
                    dst == "sim" and importer in ("tunnelkeeper.cli", "tunnelkeeper.demo")
                )
            elif src == dst:
                allowed = True
            else:
                allowed = RANK[dst] < RANK[src] and {src, dst} != {"cloudflared", "cloudflare"}
            if not allowed:
                wrong.append(f"{importer} ({src}) imports {target} ({dst})")
    assert wrong == []


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            # a package's __init__ re-exporting its own modules is not a cycle of design
            if node == nxt.rsplit(".", 1)[0] or nxt == node.rsplit(".", 1)[0]:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_the_rules_see_real_imports() -> None:
    # guards against an ast walk that silently finds nothing
    assert "tunnelkeeper.supervise.policy" in GRAPH["tunnelkeeper.supervise.supervisor"]
    assert "tunnelkeeper.config.model" in GRAPH["tunnelkeeper.config.load"]


def test_msgspec_is_imported_through_structs_alone() -> None:
    # tunnelkeeper/structs.py imports it without typing_extensions: the first import must be it
    direct = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(n == "msgspec" or n.startswith("msgspec.") for n in names):
                direct.append(module_name(path))
    assert sorted(set(direct)) == ["tunnelkeeper.structs"]
