"""The package's shape: no import cycle between fastgen_core's modules (every import statement counts, those inside
functions too; only ``if TYPE_CHECKING:`` blocks, which never run, do not), no file over ~400 lines and no class
over ~250, no module state that a function rebinds (``global``), and tests/gpu holding tests only."""
import ast
from pathlib import Path

import fastgen_core

PACKAGE = Path(fastgen_core.__file__).parent
ROOT = PACKAGE.parent
MAX_FILE_LINES = 400
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str) -> set[str]:
    """The fastgen_core modules that module ``name`` imports, anywhere in it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports the module pkg.mod; "from mod import name" the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:          # "fastgen_core.x.y.attr" -> the module that defines it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_imports_inside_functions_and_finds_a_cycle():
    assert "fastgen_core.engine.tp_worker" in imports_of("fastgen_core.engine.engine")      # imported in __init__
    assert "fastgen_core.server.replica.openai_api" in imports_of("fastgen_core.server.replica.local")
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_fastgen_core_has_no_import_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    assert sum(map(len, graph.values())) > 100
    found = cycles(graph)
    assert not found, f"import cycles: {found}"


def test_no_file_over_400_lines_and_no_class_over_250():
    long_files = {str(p.relative_to(ROOT)): n for p in MODULES.values()
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    long_classes = {}
    for p in MODULES.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long_classes[f"{p.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long_classes, f"classes over {MAX_CLASS_LINES} lines: {long_classes}"


def test_no_function_rebinds_module_state():
    """State reaches a function as an argument or an object's attribute, never as a module global it rebinds."""
    found = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in MODULES.values()
             for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Global)]
    assert not found, found


def test_tests_gpu_holds_tests_only():
    """tests/gpu: test modules, their conftest, and helper modules a test imports; experiment scripts live in
    tools/, device scripts too."""
    gpu = ROOT / "tests" / "gpu"
    files = [p for p in gpu.iterdir() if p.is_file()]
    assert not [p.name for p in files if p.suffix != ".py"], "only Python test files belong in tests/gpu"
    tests = [p for p in files if p.name.startswith("test_") or p.name == "conftest.py"]
    imported = {a.name.split(".")[0] for p in tests for n in ast.walk(ast.parse(p.read_text()))
                for a in getattr(n, "names", []) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for p in tests for n in ast.walk(ast.parse(p.read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module}
    others = [p.name for p in files if p not in tests and p.stem not in imported]
    assert not others, f"not tests and not imported by one: {others} (experiment scripts belong in tools/)"
