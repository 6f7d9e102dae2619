"""The layout keeps its promise: imports flow one way (docs/architecture.md).

cli -> runtime -> front ends (scim, ldap, roleapi) -> access -> directory -> config ->
schemas -> store. A module may import its own package, anything below its layer, and
nothing above; front ends never import each other; nothing imports the CLI; the store and
the attribute map know nothing of the facade. Imports inside functions count too: a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Import layers, top first; a group may import groups with a higher number only.
LAYERS: dict[str, int] = {
    "idm_facade.cli": 0,
    "idm_facade.runtime": 1,
    "idm_facade.scim": 2,
    "idm_facade.ldap": 2,
    "idm_facade.roleapi": 2,
    "idm_facade.access": 3,
    "idm_facade.directory": 4,
    "idm_facade.config": 5,
    "schemas": 6,
    "store": 7,
}


def _group(module: str) -> str | None:
    for group in sorted(LAYERS, key=len, reverse=True):
        if module == group or module.startswith(group + "."):
            return group
    return None


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("idm_facade", "schemas", "store"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, module: str, top_level: bool = False) -> set[str]:
    """Modules ``module`` imports (with ``top_level``: only at module level, where a cycle
    breaks whichever module is imported first)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _edges() -> list[tuple[str, str]]:
    modules = _modules()
    edges = []
    for name, path in modules.items():
        for target in _imports(path, name):
            if target in modules:
                edges.append((name, target))
    return edges


def test_every_module_belongs_to_a_layer():
    assert not [m for m in _modules() if m != "idm_facade" and _group(m) is None]


def test_imports_flow_one_way():
    wrong = []
    for source, target in _edges():
        a, b = _group(source), _group(target)
        if a is None or b is None or a == b:
            continue
        if LAYERS[b] <= LAYERS[a]:
            wrong.append(f"{source} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_nothing_imports_the_cli():
    assert not [f"{s} -> {t}" for s, t in _edges()
                if _group(t) == "idm_facade.cli" and _group(s) != "idm_facade.cli"]


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {name: {t for t in _imports(path, name, top_level=True)
                    if t in modules and t != name}
             for name, path in modules.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package's __init__ re-exporting its own submodules is not a cycle to worry about.
    real = [c for c in cycles if not _package_reexport(c)]
    assert not real, "\n".join(real)


def _package_reexport(cycle: str) -> bool:
    first, second = cycle.split(" -> ")[:2]
    return second.startswith(first + ".") or first.startswith(second + ".")
