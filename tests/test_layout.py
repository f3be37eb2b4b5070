"""The package layout's rules (README, Development): dependencies point one way, no cycles.

    proxy.cli -> proxy.serve -> proxy.api -> proxy.control -> proxy.dataplane -> shadow
                                                                              -> proxy.config

A module may import its own part and the parts below it; `shadow` may import only
`proxy.config`; the package root `proxy` (its version) is open to all. Every import counts,
including the ones deferred into functions: a deferred import is still a dependency, only a
later one. The graph is read from the source with `ast`, so this test fails the moment a file
adds an import that points the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# lower rank = lower layer; a module may import ranks <= its own
RANKS = {
    "proxy.config": 0,
    "shadow": 1,
    "proxy.dataplane": 2,
    "proxy.control": 3,
    "proxy.api": 4,
    "proxy.serve": 5,
    "proxy.cli": 6,
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for top in ("proxy", "shadow"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a `from pkg import mod` counts as pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from proxy.x import Class` -> proxy.x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _part(module: str) -> str | None:
    for part in sorted(RANKS, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return None


def test_every_module_belongs_to_a_part() -> None:
    """New files go into one of the parts; only the package roots sit outside them."""
    loose = [m for m in _graph() if _part(m) is None and m not in ("proxy", "shadow")]
    assert not loose, f"modules outside the parts of the layout: {loose}"


def test_dependencies_point_down() -> None:
    graph = _graph()
    assert not graph["proxy"], "proxy/__init__.py may import nothing of the project"
    wrong = []
    for module, deps in sorted(graph.items()):
        here = _part(module)
        if here is None:
            continue
        for dep in sorted(deps - {"proxy"}):  # the package root holds only __version__
            there = _part(dep)
            if there is None or RANKS[there] > RANKS[here]:  # shadow's rank leaves it config
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "imports against the layout's direction:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over every import, deferred ones included."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
    assert not cycles, f"modules that import each other (directly or round about): {cycles}"


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The graph reader itself: a deferred, relative import pointing up is found."""
    pkg = tmp_path / "proxy" / "dataplane"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..control import runtime\n")
    found = _imports("proxy.dataplane.x", pkg / "x.py", {"proxy.control.runtime",
                                                         "proxy.dataplane.x"})
    assert found == {"proxy.control.runtime"}
