"""The arrows of docs/ARCHITECTURE.md, read from the source: which package may import which, no
import cycles (function-local imports count: hiding a cycle in a function does not remove it),
no private name imported from another module; and the processes that start often import no heavy
library they do not use."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> package name once installed (pyproject.toml's package-dir).
PACKAGES = {"agent": "synthpool.agent", "coordinator": "synthpool.coordinator",
            "common": "synthpool.common", "protos": "synthpool.protos", "synthpool": "synthpool"}
# (importer's prefix, imported prefix) pairs that must never occur.
FORBIDDEN = [
    ("synthpool.agent", "synthpool.coordinator"),
    ("synthpool.coordinator", "synthpool.agent"),
    *[("synthpool.common", other) for other in ("synthpool.agent", "synthpool.coordinator",
                                                "synthpool.commands", "synthpool.cli",
                                                "synthpool.doctor", "synthpool.local_federation")],
    # The ServerApp runs whatever app the SuperLink accepts: it holds none of the daemon's keys.
    ("synthpool.coordinator.serverapp", "synthpool.coordinator.admin"),
    # The ClientApp is what the site's executor forks per message, by its pinned name.
    ("synthpool.agent.clientapp", "synthpool.agent.host"),
    # The local harness is for demo, tests and benchmarks only.
    *[(side, "synthpool.local_federation") for side in ("synthpool.agent", "synthpool.coordinator")],
    *[(side, "synthpool.commands") for side in ("synthpool.agent", "synthpool.coordinator")],
]
GENERATED = {"synthpool.protos.admin_pb2", "synthpool.protos.admin_pb2_grpc"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = modules()


@cache
def syntax(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


def resolve(name: str) -> str | None:
    """The project module `name` refers to (a module, or a name inside one), else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import in `module`, wherever it
    stands in the file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(syntax(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target:
                    found.append((target, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = resolve(f"{base}.{alias.name}")
                if target:
                    name = "" if target == f"{base}.{alias.name}" else alias.name
                    found.append((target, name, node.lineno))
    return [(t, n, line) for t, n, line in found if t != module]


GRAPH = {m: imports(m) for m in MODULES if m not in GENERATED}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_reader_sees_relative_and_function_local_imports():
    assert len(GRAPH) > 80
    study = {t for t, _, _ in GRAPH["synthpool.coordinator.serverapp.study"]}
    assert {"synthpool.coordinator.serverapp.transport", "synthpool.common.atomic"} <= study
    # app.py imports flwr inside make_app, and the study at the top; demo.py imports the
    # harness inside its command
    assert "synthpool.coordinator.serverapp.study" in {
        t for t, _, _ in GRAPH["synthpool.coordinator.serverapp.app"]}
    assert "synthpool.local_federation" in {t for t, _, _ in GRAPH["synthpool.commands.demo"]}


def test_no_forbidden_arrow():
    broken = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items() for t, _, line in edges
              for src, dst in FORBIDDEN if under(m, src) and under(t, dst)]
    assert not broken, "\n".join(broken)


def test_no_import_cycle():
    """Tarjan's strongly connected components of the module graph: any with two modules or more
    is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in {t for t, _, _ in GRAPH.get(v, [])}:
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

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_aliases(module: str) -> set[str]:
    """Names under which `module` holds other project modules (`from . import state as st`)."""
    names = set()
    for node in ast.walk(syntax(module)):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if any(t.endswith("." + alias.name) and not n for t, n, _ in GRAPH[module]):
                    names.add(alias.asname or alias.name)
    return names


def test_no_private_name_crosses_a_module():
    crossing = [f"{m}:{line} imports {n} from {t}" for m, edges in GRAPH.items()
                for t, n, line in edges if private(n)]
    for m in GRAPH:
        aliases = module_aliases(m)
        crossing += [f"{m}:{node.lineno} uses {node.value.id}.{node.attr}"
                     for node in ast.walk(syntax(m))
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in aliases and private(node.attr)]
    assert not crossing, "\n".join(crossing)


def test_a_cycle_would_be_seen(monkeypatch):
    a, b = "synthpool.common.wire", "synthpool.common.schema"
    monkeypatch.setitem(GRAPH, a, [*GRAPH[a], (b, "", 1)])
    monkeypatch.setitem(GRAPH, b, [*GRAPH[b], (a, "", 1)])
    with pytest.raises(AssertionError, match="wire"):
        test_no_import_cycle()


@pytest.mark.parametrize("rule", FORBIDDEN[:2])
def test_a_forbidden_arrow_would_be_seen(rule, monkeypatch):
    """The rules are not vacuous: an import of the forbidden side is found."""
    src, dst = rule
    module = next(m for m in GRAPH if under(m, src))
    target = next(m for m in MODULES if under(m, dst))
    monkeypatch.setitem(GRAPH, module, [*GRAPH[module], (target, "", 1)])
    with pytest.raises(AssertionError, match="imports"):
        test_no_forbidden_arrow()


# Processes that start often, or many at once on a 2-core host (a federation starts a dozen),
# and the heavy libraries they must not import before they need them.
LIGHT_STARTS = [
    ("synthpool.cli", ("torch", "opacus", "sklearn", "dp_accounting")),  # every admin command
    ("synthpool.agent.host.daemon", ("torch", "flwr", "sklearn", "dp_accounting")),  # each site
    ("synthpool.coordinator.serverapp.app", ("sklearn", "dp_accounting")),  # each run
]


@pytest.mark.parametrize("module,heavy", LIGHT_STARTS, ids=[m for m, _ in LIGHT_STARTS])
def test_a_process_imports_no_heavy_library_it_does_not_use(module, heavy):
    import subprocess
    import sys

    probe = (f"import sys, {module}; "
             f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "", f"importing {module} imports {out}"
