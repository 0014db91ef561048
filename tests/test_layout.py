"""The package's shape (README, "Code map"): subpackages in layers, every import pointing down
the layers or within a subpackage, and no import cycle between modules."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "recall"
# lowest first: a module may import from its own subpackage and from the layers before its own
LAYERS = [
    {"errors"},
    {"arrays", "testpoint", "runtime", "timer", "versions"},
    {"spec"},
    {"kernel", "samples"},
    {"model"},
    {"ingest", "sources"},
    {"store", "contract"},
    {"evaluate"},
    {"engines"},
    {"jobs"},
    {"ops"},
    {"run", "serve"},
    {"cli"},
    {"__main__", "__init__"},  # `python -m recall`, and the package facade (read_table)
]


def unit(module: str) -> str:
    """`recall.store.commit` -> `store`; `recall.errors` -> `errors`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    return next(i for i, group in enumerate(LAYERS) if name in group)


def modules() -> dict[str, set[str]]:
    """Every module of the package with the recall modules it imports (anywhere in it)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recall"):
                imports.add(node.module)
                imports.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imports.update(a.name for a in node.names if a.name.startswith("recall"))
        out[name] = imports
    return {name: {i for i in imports if i in out} for name, imports in out.items()}


def test_every_subpackage_has_a_layer():
    names = {unit(m) for m in modules()}
    assert names <= set().union(*LAYERS), names - set().union(*LAYERS)


def test_imports_point_down_the_layers():
    wrong = [f"{m} imports {i}" for m, imports in modules().items() for i in imports
             if unit(i) != unit(m) and layer(unit(i)) >= layer(unit(m)) and i != "recall"]  # recall: __version__
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = modules()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt == node or nxt == "recall":
                continue
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
