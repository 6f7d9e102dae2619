"""The layout keeps its promise: imports flow one way (docs/architecture.md).

cli -> runtime -> front ends (scim, ldap, roleapi, admin) -> access -> directory -> config ->
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
    "idm_facade.provisioning": 1.5,
    "idm_facade.scim": 2,
    "idm_facade.ldap": 2,
    "idm_facade.roleapi": 2,
    "idm_facade.admin": 2,
    "idm_facade.feed": 2,
    "idm_facade.access": 3,
    "idm_facade.directory": 4,
    "idm_facade.config": 5,
    "idm_facade.metrics": 5,
    "idm_facade.requestlog": 4,
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


# --------------------------------------------------------------------------- the client view

#: What a stored entry or a snapshot exposes that a front end must not read itself: values
#: come from the client's view (``ClientView.values/complex/first``), entries from its
#: ``search``/``get``.
RAW_READS = frozenset({"attrs", "entries", "by_id", "by_kind", "equality", "ordered",
                       "grants", "visible_handles", "live"})

#: Functions of a front end allowed to read the whole snapshot, and why.
STRUCTURE = {
    # Every entry's DN must be the same for every client, so the DIT is laid out once from
    # the whole snapshot; it reads names and parents and answers nothing itself.
    ("idm_facade.ldap.dit", "build_layout"),
    ("idm_facade.ldap.dit", "_pick_root"),
}


def _raw_reads(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def walk(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if (module, function) not in STRUCTURE:
            where = f"{module}:{getattr(node, 'lineno', '?')} in {function}"
            if isinstance(node, ast.Attribute) and node.attr in RAW_READS:
                found.append(f"{where}: .{node.attr}")
            # entry.complex[...] / entry.complex.get(...): reading the stored elements
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "complex":
                found.append(f"{where}: .complex.{node.attr}")
            # entry.first("name"): Entry.first takes the attribute first; the view's
            # first(entry, "name") takes the entry
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "first" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                found.append(f"{where}: Entry.first")
            # Snapshot.search(..., policy=...): the view's search takes no policy
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("search", "count") \
                    and any(k.arg == "policy" for k in node.keywords):
                found.append(f"{where}: Snapshot.{node.func.attr}")
        for child in ast.iter_child_nodes(node):
            walk(child, function)

    walk(tree, "<module>")
    return found


def test_front_ends_read_entries_only_through_the_client_view():
    """SCIM, LDAP and the role API never read a stored entry or the snapshot's indexes
    themselves: everything they show comes through ``ClientView``, which applies the
    client's policy (tests/test_view.py and the e2e suites check what it shows)."""
    found = []
    for name, path in _modules().items():
        if _group(name) in ("idm_facade.scim", "idm_facade.ldap", "idm_facade.roleapi",
                            "idm_facade.admin", "idm_facade.feed"):
            found += _raw_reads(path, name)
    assert not found, "\n".join(found)


def test_the_raw_read_check_catches_raw_reads(tmp_path):
    """The check above finds each form it looks for (so it cannot pass by finding nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(entry, snap, view):\n"
        "    entry.attrs.get('cpr')\n"
        "    entry.complex.get('emails')\n"
        "    entry.first('userName')\n"
        "    snap.search(None, kinds=None, policy=None)\n"
        "    snap.entries[0]\n"
        "    view.first(entry, 'userName')\n"
        "    view.complex(entry, 'emails')\n")
    found = _raw_reads(sample, "sample")
    assert [f.split(": ", 1)[1] for f in found] == [
        ".attrs", ".complex.get", "Entry.first", "Snapshot.search", ".entries"]
