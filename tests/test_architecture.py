"""Packages depend one way, and modules do not import each other in circles.

The order is emitter (contract, wire) <- collector <- queries <- dashboards
(docs/architecture.md): a package may import the ones before it, never one
after it.  Every ``import`` statement counts, a function-level (lazy) one as
much as a top-level one: a lazy import is still a dependency.  The only
exception is the ``hookscope`` dispatcher (emitter/cli.py), which names each
subcommand's module as a string and imports none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("emitter", "collector", "queries", "dashboards")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in ORDER for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as
    ``pkg.mod`` when that is a module, else as ``pkg``)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _rank(module: str) -> int:
    return ORDER.index(module.split(".")[0])


def test_the_graph_sees_the_packages():
    g = _graph()
    assert {m.split(".")[0] for m in g} == set(ORDER)
    assert "emitter.contract" in g["emitter.journal"]  # the parser finds plain imports


def test_packages_depend_one_way():
    bad = sorted(f"{m} imports {t}" for m, ts in _graph().items() for t in ts if _rank(t) > _rank(m))
    assert not bad, ("a package imports one later in the order "
                     f"{' <- '.join(ORDER)}:\n  " + "\n  ".join(bad))


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _without_packages(g):
    """A package's ``__init__`` is imported by each of its modules; an
    ``__init__`` that re-exports from its own modules would show as a cycle
    that Python resolves by design, so edges into a package are left out."""
    pkgs = {m for m in g if (ROOT / m.replace(".", "/") / "__init__.py").exists()}
    return {m: {t for t in ts if t not in pkgs} for m, ts in g.items()}


def test_no_module_import_cycles():
    cycles = _cycles(_without_packages(_graph()))
    assert not cycles, "module import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
