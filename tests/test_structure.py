"""The package's shape: the lazy registration table, the import graph, importing every module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scorestudio"


def module_names() -> dict[str, Path]:
    """Every module of the package (packages by their ``__init__``), by dotted name, except the
    ``python -m scorestudio`` entry point (importing it runs the command line)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if name != "scorestudio.__main__":
            modules[name] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_time_imports(body: list[ast.stmt]):
    """The import statements that run when a module is imported: its body, classes, ``if`` and
    ``try`` blocks; not functions (a lazy import is fine) nor ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from import_time_imports(node.body)
            yield from import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from import_time_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from import_time_imports(node.body)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules whose code runs when ``name`` is imported first: each imported module,
    the submodules named by ``from X import a``, and the packages above them that are not
    above ``name`` itself (those are being imported already)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in import_time_imports(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        targets.add(base)
        targets.update(f"{base}.{alias.name}" for alias in node.names)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            if module in modules and module not in ancestors and module != name:
                out.add(module)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None when it is acyclic."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_modules():
    modules = module_names()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle at import time: " + " -> ".join(cycle)


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


ENV_WRITES = {"os.environ.setdefault", "os.environ.update", "os.environ.pop", "os.environ.clear", "os.putenv",
              "os.unsetenv"}


def import_time_statements(body: list[ast.stmt]):
    """The statements that run when a module is imported (as :func:`import_time_imports`)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from import_time_statements(node.orelse)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            for block in ("body", "orelse", "finalbody"):
                yield from import_time_statements(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from import_time_statements(handler.body)
        else:
            yield node


def environment_writes(statement: ast.stmt) -> list[str]:
    """The environment writes in ``statement`` (outside lambdas), as source text."""
    found = []
    for node in ast.walk(statement):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ENV_WRITES:
            found.append(ast.unparse(node))
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, ast.AugAssign) else []
        found += [ast.unparse(t) for t in targets
                  if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ"]
    return found


def test_no_module_writes_the_environment_at_import():
    """Settings such as OMP_WAIT_POLICY belong to a command's main(), not to an import."""
    writes = {}
    for name, path in module_names().items():
        found = [w for st in import_time_statements(ast.parse(path.read_text()).body) for w in environment_writes(st)]
        if found:
            writes[name] = found
    assert writes == {}


IMPORT_ALL = """
import importlib, json, os, sys
before = dict(os.environ)
import scorestudio
from scorestudio.utils import registry
after_package = dict(os.environ)
lazy = dict(registry._LAZY_MODULES)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
registered = {name: cls.__module__ for name, cls in registry._REGISTRY.items()}
changed = sorted(k for k in set(before) | set(after_package) if before.get(k) != after_package.get(k))
print(json.dumps({"lazy": lazy, "registered": registered, "env_changed_by_package": changed}))
"""


def test_every_module_imports_and_the_lazy_table_is_the_registry():
    """In a fresh interpreter: ``import scorestudio`` writes no environment variable, every module
    imports (sorted order), and the names ``scorestudio/__init__.py`` declares lazily are exactly
    those ``@register`` defines, each declared in the module that registers it."""
    names = sorted(module_names())
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, json.dumps(names)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["env_changed_by_package"] == []
    lazy, registered = report["lazy"], report["registered"]
    assert sorted(set(registered) - set(lazy)) == [], "registered but not declared in scorestudio/__init__.py"
    assert sorted(set(lazy) - set(registered)) == [], "declared in scorestudio/__init__.py but never registered"
    wrong = {n: {"declared": m, "registered": registered[n]} for n, m in lazy.items() if registered[n] != m}
    assert wrong == {}, "declared with another module than the one that registers it"
