"""Architecture rules, checked on the package's source (docs/ARCHITECTURE.md).

- Imports go down the layer table of docs/ARCHITECTURE.md (read from the document, so it stays true).
- No import cycle between stts modules. Imports inside functions count: a module that imports one which
  imports it back is a circle in the design even when a function-level import keeps Python happy.
- Every module imports on its own (no hidden dependence on what was imported before it).
- Nothing is found by scanning `sys.modules`: backbone families register their checkpoint readers.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stts"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"


def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package` (a package is its __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at any depth of its AST (functions included).

    `from a.b import c` imports a.b, and a.b.c too if that is a module; `import a.b` imports a.b. A
    parent package is not counted as imported by its submodules' imports (Python runs its __init__
    first, but that is the package importing its parts, not the other way round).
    """
    mods = _modules(package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def _path(graph: dict[str, set[str]], cycle: list[str]) -> str:
    """One circle inside a component, for the error message: a -> b -> ... -> a."""
    start, members = cycle[0], set(cycle)
    prev, frontier = {start: None}, [start]
    while frontier:  # breadth-first back to start through the component
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    chain = [v]
                    while prev[chain[-1]] is not None:
                        chain.append(prev[chain[-1]])
                    return " -> ".join([*reversed(chain), start])
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return " <-> ".join(cycle)


def test_the_checker_sees_a_cycle_through_a_function_level_import(tmp_path):
    """A toy package whose circle closes inside a function (and one through a relative import)."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toy.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from toy import a\n    return a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("def g():\n    import toy.sub.c\n")
    (pkg / "e.py").write_text("import toy.a\n")  # imports into a circle, is not part of one
    graph = import_graph(pkg)
    assert graph["toy.b"] == {"toy", "toy.a"} and graph["toy.sub.c"] == {"toy.sub", "toy.sub.d"}
    assert find_cycles(graph) == [["toy.a", "toy.b"], ["toy.sub.c", "toy.sub.d"]]


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in stts (a layer imports one that imports it back):\n" + "\n".join(
        _path(graph, c) for c in cycles)


def test_every_module_imports_on_its_own():
    """Each module imported with no other stts module loaded before it (one interpreter, the stts
    modules dropped from sys.modules between imports: what a fresh interpreter would do, without
    paying torch's import ~60 times)."""
    names = sorted(m for m in _modules(PACKAGE) if not m.endswith("__main__"))
    code = (
        "import importlib, sys, traceback\n"
        f"failed = []\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'stts' or m.startswith('stts.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", "modules that do not import on their own:\n" + proc.stdout


def test_nothing_is_found_by_scanning_sys_modules():
    """Checkpoint filters and official readers are registered with their family (stts.models
    .register_family), not looked up in whatever modules happen to be imported."""
    users = []
    for name, path in _modules(PACKAGE).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                users.append(f"{name}:{node.lineno}")
    assert not users, f"sys.modules used in {users}"


def layer_table(text: str) -> dict[str, int]:
    """{module or package: layer} from the fenced table under '## Layers' (lines '<n>  <modules...>')."""
    section = text.split("## Layers", 1)[1].split("```", 2)[1]
    table = {}
    for line in section.splitlines():
        m = re.fullmatch(r"\s*(\d+)\s+(.+)", line)
        if m:
            for name in m[2].split():
                table[name] = int(m[1])
    return table


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """The layer of the longest table entry that is the module or a package above it (the root package,
    an entry without a dot, stands for itself only: a new top-level module needs its own row)."""
    best = None
    for name in table:
        above = "." in name and module.startswith(name + ".")
        if (module == name or above) and (best is None or len(name) > len(best)):
            best = name
    return table[best] if best is not None else None


def upward_imports(graph: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer_of(a, table), layer_of(b, table)
            if lb > la:
                out.append(f"{a} (layer {la}) imports {b} (layer {lb})")
    return out


def test_the_layer_check_sees_an_upward_import():
    table = layer_table("## Layers\n```\nlayer modules\n 1  p.low\n 2  p.mid p.side\n 3  p\n```\n")
    assert table == {"p.low": 1, "p.mid": 2, "p.side": 2, "p": 3}
    assert layer_of("p.mid.deep", table) == 2 and layer_of("p", table) == 3 and layer_of("p.other", table) is None
    graph = {"p.low": {"p.mid.deep"}, "p.mid.deep": {"p.low", "p.side"}, "p": {"p.low"}, "p.side": set()}
    assert upward_imports(graph, table) == ["p.low (layer 1) imports p.mid.deep (layer 2)"]


def test_imports_go_down_the_documented_layers():
    table = layer_table(ARCHITECTURE.read_text())
    graph = import_graph(PACKAGE)
    unplaced = [m for m in graph if layer_of(m, table) is None]
    assert not unplaced, f"modules with no layer in docs/ARCHITECTURE.md: {unplaced}"
    assert not (bad := upward_imports(graph, table)), "imports up the layers of docs/ARCHITECTURE.md:\n" + \
        "\n".join(bad)
