"""The plan of the code holds: one import direction, no cycle, every package saying its job.

Walks the source (no import is executed): every ``import``/``from`` statement, at module level,
inside functions (lazy) and under ``if TYPE_CHECKING:`` (type-only), resolved to the project's
modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "providers", "cache", "retrieval")

# What each layer may import when it loads (type-only imports may name any layer above: they
# run only under a type checker). Read bottom to top: cache and providers at the floor,
# gateway.core above them, gateway.cli at the top.
LOAD_ALLOWED: dict[str, set[str]] = {
    "cache": set(),
    "providers": set(),
    "retrieval": {"cache"},
    "gateway.core": {"cache", "providers"},
    "gateway.policy": {"gateway.core", "providers"},
    "gateway.telemetry": {"gateway.policy", "gateway.core", "providers"},
    "gateway.routing": {
        "gateway.telemetry",
        "gateway.policy",
        "gateway.core",
        "providers",
        "cache",
    },
    "gateway.tiering": {
        *("gateway.routing", "gateway.telemetry", "gateway.policy", "gateway.core"),
        *("providers", "cache"),
    },
    "gateway.stages": {
        *("gateway.telemetry", "gateway.policy", "gateway.core"),
        *("providers", "cache", "retrieval"),
    },
    "gateway.quality": {
        *("gateway.routing", "gateway.telemetry", "gateway.policy", "gateway.core"),
        "providers",
    },
    "gateway.admin": {
        *("gateway.quality", "gateway.stages", "gateway.tiering", "gateway.routing"),
        *("gateway.telemetry", "gateway.policy", "gateway.core"),
        *("providers", "cache", "retrieval"),
    },
    "gateway.api": {
        *("gateway", "gateway.admin", "gateway.quality", "gateway.stages", "gateway.tiering"),
        *("gateway.routing", "gateway.telemetry", "gateway.policy", "gateway.core"),
        *("providers", "cache", "retrieval"),
    },
}
# Everything in the bottom layers, whatever the kind of import.
NEVER: dict[str, set[str]] = {
    "providers": {"gateway", "cache", "retrieval"},
    "cache": {"gateway", "providers", "retrieval"},
    "retrieval": {"gateway", "providers"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> dict[str, str]:
    """Project modules ``name`` imports, each with its kind: load, lazy or type."""
    found: dict[str, str] = {}
    rank = {"load": 0, "lazy": 1, "type": 2}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def add(target: str, kind: str) -> None:
        known = target in MODULES and target != name
        if known and (target not in found or rank[kind] < rank[found[target]]):
            found[target] = kind

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit_one(stmt, "type")
                for stmt in child.orelse:
                    visit_one(stmt, kind)
            else:
                visit_one(child, kind)

    def visit_one(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            visit(node, "lazy" if kind == "load" else kind)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, kind)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, kind)
        else:
            visit(node, kind)

    visit(ast.parse(path.read_text()), "load")
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "gateway" and len(parts) > 1 and (ROOT / "gateway" / parts[1]).is_dir():
        return f"gateway.{parts[1]}"
    return parts[0]


def _cycles(kinds: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, kind in GRAPH[v].items():
            if kind not in kinds:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            connect(module)
    return found


def test_the_walk_sees_the_project() -> None:
    # A walker that resolved nothing would pass every rule below.
    assert len(MODULES) > 100
    assert GRAPH["gateway.api.pipeline"]["gateway.core.context"] == "load"
    assert GRAPH["gateway.core.runtime"]["gateway.routing.router"] == "type"


@pytest.mark.parametrize("kinds", [{"load"}, {"load", "lazy"}, {"load", "lazy", "type"}])
def test_no_import_cycle(kinds: set[str]) -> None:
    assert _cycles(kinds) == []


def test_bottom_layers_never_import_upwards() -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target).split(".")[0] in NEVER.get(module.split(".")[0], set())
    ]
    assert wrong == []


def test_each_layer_loads_only_the_layers_below() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        allowed = LOAD_ALLOWED.get(layer)
        if allowed is None:  # gateway.cli, gateway/__main__.py: the top may import anything
            continue
        for target, kind in targets.items():
            if kind != "type" and _layer(target) not in allowed | {layer}:
                wrong.append(f"{module} -> {target} ({kind})")
    assert wrong == []


def _docstring(path: Path) -> str | None:
    return ast.get_docstring(ast.parse(path.read_text()))


def test_every_layer_says_its_job() -> None:
    layers = {_layer(m) for m in MODULES if m.startswith("gateway.")}
    layers |= {"providers", "cache", "retrieval"}
    silent = [
        layer
        for layer in sorted(layers)
        if not ast.get_docstring(ast.parse(MODULES[layer].read_text()))
    ]
    assert silent == []
    assert set(LOAD_ALLOWED) | {"gateway.cli"} >= {layer for layer in layers if "." in layer}
