"""The package's import graph: no cycle between subpackages, no import against the layer order.

Layers, lowest first (a module may import its own layer and any layer below)::

    base (gnn_lic.errors, gnn_lic.utils, gnn_lic.cli, gnn_lic.compiled: import nothing of gnn_lic but each other)
    graph -> nn -> models -> codec -> evaluation -> training, analysis -> bench, __main__

Every ``import``/``from ... import`` of every module counts, including the ones inside
functions (a lazy import is still a dependency).
"""

import ast
from pathlib import Path

import gnn_lic

ROOT = Path(gnn_lic.__file__).resolve().parent

#: layer of each top-level part of gnn_lic (a subpackage or a module)
LAYERS = {
    "errors": 0, "utils": 0, "cli": 0, "compiled": 0, "__init__": 0,
    "graph": 1,
    "nn": 2,
    "models": 3,
    "codec": 4,
    "evaluation": 5,
    "training": 6, "analysis": 6,
    "bench": 7, "__main__": 7,
}

def _part(module: str) -> str:
    """``gnn_lic.models.glic`` -> ``models``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, names: bool = False):
    """Absolute names of the modules ``path`` imports (with ``names``: also ``mod.name`` of
    every ``from mod import name``, which may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            if names:
                for alias in node.names:
                    yield f"{mod}.{alias.name}"


def import_graph():
    """``{(importer part, imported part): {importing file}}`` over every module of gnn_lic."""
    edges = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = _part(_module_name(path)) if path.parent != ROOT else path.stem
        for mod in _imports(path):
            if mod != "gnn_lic" and not mod.startswith("gnn_lic."):
                continue
            dst = _part(mod)
            if dst != src:
                edges.setdefault((src, dst), set()).add(str(path.relative_to(ROOT.parent)))
    return edges


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_no_import_against_the_layer_order():
    back = {(src, dst): sorted(files) for (src, dst), files in import_graph().items()
            if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and LAYERS[src] > 0)}
    assert not back, f"imports against the layer order: {back}"


def _assert_acyclic(graph) -> None:
    """Depth-first search over ``graph`` (node -> targets); fails naming the first cycle found."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_cycle_between_parts():
    graph = {}
    for (src, dst) in import_graph():
        graph.setdefault(src, set()).add(dst)
    _assert_acyclic(graph)


def test_the_checker_sees_a_back_edge(tmp_path):
    """The parser resolves relative imports: ``from ..training import x`` in evaluation is training."""
    pkg = tmp_path / "gnn_lic" / "evaluation"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("from ..training import x\nimport gnn_lic.models.base\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "gnn_lic"
    try:
        assert set(_imports(f)) == {"gnn_lic.training", "gnn_lic.models.base"}
    finally:
        ROOT = saved


def _module_graph():
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set(_imports(path, names=True))
        for mod in targets:
            if any(t.startswith(mod + ".") and t in modules for t in targets):
                continue  # `from pkg import submodule`: the edge goes to the submodule
            while mod and mod not in modules:  # `from pkg.mod import name`: the module is pkg.mod
                mod = mod.rpartition(".")[0]
            if mod and mod != name:
                graph.setdefault(name, set()).add(mod)
    return graph


def test_no_cycle_between_modules():
    _assert_acyclic(_module_graph())


def test_errors_import_nothing():
    """Every layer raises gnn_lic.errors' classes, so that module depends on nothing."""
    assert set(_imports(ROOT / "errors.py")) <= {"__future__"}
