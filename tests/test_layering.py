"""The package's layers: model <- core <- {pretrain, finetune} <- {glue, embeddings}, and no import cycles.

Imports are read with `ast` (every import statement, including those inside functions: a lazy import is still a
dependency), resolved to the project's own modules, and each edge is checked against the table of allowed edges
between layers; the graph is also searched for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers its modules may import. `mosaicbert` (the package's lazy model exports), the top-level tools
# (export, benchmarking) and the benchmark scripts sit beside the stack.
ALLOWED = {
    "model": {"model"},
    "core": {"model", "core"},
    "pretrain": {"model", "core", "pretrain"},
    "finetune": {"model", "core", "finetune"},
    "glue": {"model", "core", "finetune", "glue"},
    # sentence embeddings: finetune's readers and runner pieces, export's sentence-transformers files
    "embeddings": {"model", "core", "finetune", "tools", "embeddings"},
    "package": {"model"},
    "tools": {"model", "core", "tools"},
    "benchmarks": {"package", "model", "core", "pretrain", "finetune", "glue", "embeddings", "tools", "benchmarks"},
}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "mosaicbert":
        return "benchmarks"
    if len(parts) == 1:
        return "package"
    return parts[1] if parts[1] in ALLOWED else "tools"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in graph.items() for b in targets
                  if layer(b) not in ALLOWED[layer(a)])


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file: `mosaicbert.x.y` under src/, and benchmark scripts by their file name (a
    script run as `python benchmarks/a.py` imports its neighbours as top-level modules)."""
    modules = {}
    for path in (ROOT / "src").rglob("*.py"):
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "benchmarks").glob("*.py"):
        modules[path.stem] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports (for `from pkg import sub`, the submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg/__init__.py
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # the longest project module the name starts with (`import a.b.c` runs a.b.c)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_and_rejects_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_and_lazy_imports_are_resolved(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from pkg import a\nimport os\n")
    (pkg / "c.py").write_text("from pkg import VERSION\nfrom .a import f\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py", "pkg.c": pkg / "c.py"}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg", "pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_no_import_cycles():
    modules = project_modules()
    assert "mosaicbert.core.tokenizer" in modules and "throughput" in modules
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_only_along_the_allowed_edges():
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert layer_violations(graph) == []


def test_an_edge_against_the_layers_is_reported():
    graph = {"mosaicbert.finetune.runner": {"mosaicbert.glue.data", "mosaicbert.core.config"},
             "mosaicbert.core.trainer": {"mosaicbert.pretrain.mlm"}, "mosaicbert.model.layers": {"mosaicbert.core"}}
    assert layer_violations(graph) == [
        "mosaicbert.core.trainer (core) imports mosaicbert.pretrain.mlm (pretrain)",
        "mosaicbert.finetune.runner (finetune) imports mosaicbert.glue.data (glue)",
        "mosaicbert.model.layers (model) imports mosaicbert.core (core)",
    ]
