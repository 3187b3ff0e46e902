"""The package's structure, as docs/architecture.md states it: layers, no import cycles, a core
without Ray. Imports are read from the source (module level and inside functions; only
``if TYPE_CHECKING:`` blocks are left out), so an import moved into a function still counts.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "flyte_ray"

#: Layers, bottom up; a module may import only from its own layer or below. First match wins.
LAYERS = [
    (
        "values",
        (
            "flyte_ray.errors",
            "flyte_ray.resources",
            "flyte_ray.retry",
            "flyte_ray.timeout",
            "flyte_ray.cache_policy",
            "flyte_ray.reuse_policy",
            "flyte_ray._version",
            "flyte_ray._duration",
        ),
    ),
    ("storage", ("flyte_ray.storage", "flyte_ray.checkpoint")),
    ("core", ("flyte_ray._core",)),
    ("context", ("flyte_ray.context",)),
    ("ray", ("flyte_ray._ray",)),
    ("machinery", ("flyte_ray.reuse", "flyte_ray.cache")),
    ("controller", ("flyte_ray._controller",)),
    ("api", ("flyte_ray",)),
]
#: Layers that must not import Ray (checked by importing them in a fresh interpreter).
RAY_FREE = ("values", "storage", "core", "context")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


MODS = _modules()


def _layer(mod: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{mod} belongs to no layer: add it to LAYERS in {__file__}")


def _imports(node: ast.AST):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        for n in node.orelse:
            yield from _imports(n)
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _imports(child)


def _targets(mod: str, node: ast.AST) -> set[str]:
    is_pkg = MODS[mod].name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        cands = [f"{target}.{a.name}" for a in node.names] + [target]
    else:
        cands = [a.name for a in node.names]
    out = set()
    for c in cands:
        while c and c not in MODS:
            c = c.rpartition(".")[0]
        if c and c.split(".")[0] == "flyte_ray":
            out.add(c)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODS.items():
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            deps |= _targets(mod, node)
        graph[mod] = deps - {mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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


def test_no_import_cycles_counting_imports_inside_functions():
    assert _cycles(_graph()) == []


def test_modules_import_only_from_their_layer_or_below():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _layer(dep) > _layer(mod):
                bad.append(f"{mod} ({LAYERS[_layer(mod)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert bad == [], "\n".join(sorted(bad))


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking_blocks(tmp_path):
    # the checker itself: a function-level import is an edge, a TYPE_CHECKING one is not
    src = textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from flyte_ray import task
        def f():
            from flyte_ray import run
    """)
    MODS["flyte_ray._probe"] = tmp_path / "probe.py"
    try:
        found = set().union(*(_targets("flyte_ray._probe", n) for n in _imports(ast.parse(src))))
    finally:
        del MODS["flyte_ray._probe"]
    assert "flyte_ray.run" in found and "flyte_ray.task" not in found


@pytest.mark.parametrize("layer", RAY_FREE)
def test_lower_layers_do_not_import_ray(layer):
    prefixes = dict(LAYERS)[layer]
    mods = sorted(m for m in MODS if any(m == p or m.startswith(p + ".") for p in prefixes))
    assert mods
    # A fresh interpreter with an empty stand-in for the package, so that flyte_ray/__init__.py
    # (which imports everything, Ray included) does not run: only these modules' own imports do.
    code = textwrap.dedent(f"""
        import importlib, sys, types
        pkg = types.ModuleType("flyte_ray")
        pkg.__path__ = [{str(PKG)!r}]
        sys.modules["flyte_ray"] = pkg
        for m in {mods!r}:
            importlib.import_module(m)
        ray = sorted(n for n in sys.modules if n == "ray" or n.startswith("ray."))
        assert not ray, f"importing {layer} imported {{ray[:5]}}"
    """)
    env = dict(os.environ, PYTHONPATH=str(PKG.parent))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
