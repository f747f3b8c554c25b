"""The package's layers call one way: no import cycle among segengine's modules.

Every import counts, whether at the top of a module, inside a function or under
``TYPE_CHECKING`` (naming a higher layer's type is depending on it). A cycle is
reported as the chain of modules that closes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import segengine

PACKAGE = Path(segengine.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a ``from ... import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the segengine modules it imports (a package's ``__init__`` included)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}

    def known(name: str) -> str | None:
        # `from .engines import base` names a module; `from .api import open` an attribute
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # each name is a submodule, or else an attribute of the module imported from
                base = resolve(name, is_package, node)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for target in targets:
                if target.split(".")[0] != "segengine":
                    continue
                found = known(target)
                if found and found != name:
                    graph[name].add(found)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_in(graph, set(c)) for c in components]


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest chain a -> ... -> a inside one strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    return sorted(component)


#: The layers of docs/architecture.md, top first: a module may import its own layer's
#: package (its siblings) and any layer below, never one above. Operations are one layer
#: of separate subsystems, so they may not import each other either; within the other
#: layers, modules may import each other (without a cycle: `test_no_import_cycles`).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("command line", ("segengine.cli", "segengine.__main__")),
    ("api", ("segengine", "segengine.api", "segengine.demo")),
    # jobs built from operations: a sync run writes its files with the export's rules
    ("jobs", ("segengine.sync",)),
    ("operations", ("segengine.export", "segengine.unsubscribe", "segengine.history",
                    "segengine.send", "segengine.explain", "segengine.splits")),
    ("session", ("segengine.session",)),
    ("engines", ("segengine.engines",)),
    ("definition", ("segengine.definition",)),
    ("store", ("segengine.store",)),
    ("foundations", ("segengine.fields", "segengine.addresses", "segengine.errors", "segengine.progress",
                     "segengine.lazy", "segengine.synth")),
]


def layer_of(module: str) -> tuple[int, str]:
    """(depth of the module's layer, the subsystem it belongs to)."""
    best: tuple[int, str] | None = None
    for depth, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (depth, prefix)
    assert best is not None, f"{module} belongs to no layer of LAYERS: add it"
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in sorted(graph.items()):
        depth, subsystem = layer_of(module)
        for other in sorted(imported):
            other_depth, other_subsystem = layer_of(other)
            sideways = LAYERS[depth][0] == "operations" and other_subsystem != subsystem
            if other_depth < depth or (other_depth == depth and sideways):
                wrong.append(f"{module} ({LAYERS[depth][0]}) imports {other} "
                             f"({LAYERS[other_depth][0]})")
    return wrong


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "segengine.fields" in graph["segengine.definition.nodes"]  # relative, two dots
    assert "segengine.api" in graph["segengine"]  # a package's __init__
    assert "segengine.cli" in graph["segengine.__main__"]
    # `from . import templates` depends on the submodule, not on the package's __init__
    assert "segengine.send.templates" in graph["segengine.send.campaign"]
    assert "segengine.send" not in graph["segengine.send.campaign"]


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_call_downwards():
    wrong = upward_imports(import_graph())
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_upward_imports_are_found():
    graph = {"segengine.export.file": {"segengine.api"}, "segengine.api": set(),
             "segengine.history": {"segengine.unsubscribe"}, "segengine.unsubscribe": set()}
    assert upward_imports(graph) == [
        "segengine.export.file (operations) imports segengine.api (api)",
        "segengine.history (operations) imports segengine.unsubscribe (operations)",
    ]
