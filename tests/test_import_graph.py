"""The shape of the package: its imports form no cycle, run downhill through the layers, and
every module imports by its dotted path (docs/architecture.md).

The graph is read from the source with :mod:`ast`, so it counts every import statement: those
at the top of a module, those inside functions (a cycle hidden in a function is still a
cycle) and those under ``if TYPE_CHECKING:`` (a type-only import still says which way the
dependency runs). ``from .pkg import name`` is an edge to ``pkg`` (its ``__init__`` runs) and,
when ``name`` is a submodule, to that submodule too.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xvit"

#: The layers, bottom first: a module imports modules of its own layer and of the layers below,
#: never of a layer above. A module belongs to the layer that names it exactly, else to the one
#: whose wildcard matches it. A new module that no row names fails
#: :func:`test_every_module_has_a_layer`: give it a row.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("xvit._*", "xvit.explanation")),  # errors, registry, suggestions, results
    ("models", ("xvit.models*", "xvit._inputs")),  # adapters, loading, capture; checked inputs
    ("methods", ("xvit.methods*", "xvit.api")),  # explanation methods and xvit.explain
    ("metrics", ("xvit.metrics*",)),
    ("viz", ("xvit.viz*",)),  # pictures of maps and curves; the benchmark's report draws them
    ("bench", ("xvit.bench*", "xvit.data*")),
    ("front", ("xvit", "xvit.__main__", "xvit.cli*", "xvit.demo*")),
)

#: Packages of one method or metric per file: their files share code only through private
#: modules (``_*.py``), never by importing a public sibling file.
ONE_PER_FILE = ("xvit.methods", "xvit.metrics")

#: Edges the layer order allows that the package still does not: (importer, imported, why).
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    (
        "xvit.metrics*",
        "xvit.methods._*",
        "a helper that metrics and methods share lives in a base module (xvit/_*.py)",
    ),
)

#: Modules of those packages that gather their siblings' public names by design: the
#: functional twins of the metrics (``xvit.metrics.functional``).
GATHERERS = ("xvit.metrics.functional",)

#: Cases that fail until pending work lands (module name -> reason); empty when none is.
PENDING_LAYERS: dict[str, str] = {}
#: Submodules hidden by a name their parent package exports (module name -> reason).
PENDING_IMPORTS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = sorted(FILES)


def imports_in(source: str, name: str, package: str) -> dict[str, int]:
    """The xvit modules that ``source`` (module ``name`` of ``package``) imports, each with
    the first line doing so."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in FILES and target != name:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def imports_of(name: str) -> dict[str, int]:
    """The xvit modules that module ``name`` imports, each with the first line doing so."""
    path = FILES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), name, package)


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as a list of modules, first and last the same; None for a DAG."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph[node]):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer_of(name: str) -> int | None:
    """The index in :data:`LAYERS` of the layer module ``name`` belongs to."""
    for exact in (True, False):
        for index, (_, patterns) in enumerate(LAYERS):
            for pattern in patterns:
                is_wildcard = any(c in pattern for c in "*?[")
                if is_wildcard != exact and fnmatch.fnmatchcase(name, pattern):
                    return index
    return None


def violations(name: str) -> list[str]:
    """Every import of module ``name`` that breaks the layer order or a rule above."""
    out = []
    own = layer_of(name)
    for target, line in sorted(GRAPH[name].items()):
        where = f"{FILES[name].relative_to(PACKAGE.parent)}:{line} imports {target}"
        theirs = layer_of(target)
        if own is not None and theirs is not None and theirs > own:
            out.append(f"{where}: {LAYERS[own][0]} must not import {LAYERS[theirs][0]}")
        parent, _, leaf = target.rpartition(".")
        sibling = (
            parent in ONE_PER_FILE and parent == name.rpartition(".")[0] and name not in GATHERERS
        )
        if sibling and not leaf.startswith("_"):
            out.append(f"{where}: a public sibling; move what both need to a private module")
        for importer, imported, why in FORBIDDEN:
            if fnmatch.fnmatchcase(name, importer) and fnmatch.fnmatchcase(target, imported):
                out.append(f"{where}: {why}")
    return out


def _cases(names: Iterable[str], pending: dict[str, str]) -> list[object]:
    cases: list[object] = []
    for name in names:
        reasons = [why for pattern, why in pending.items() if fnmatch.fnmatchcase(name, pattern)]
        marks = [pytest.mark.xfail(strict=False, reason=reasons[0])] if reasons else []
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(GRAPH)
    if cycle:
        steps = [
            f"  {FILES[a].relative_to(PACKAGE.parent)}:{GRAPH[a][b]} imports {b}"
            for a, b in itertools.pairwise(cycle)
        ]
        pytest.fail("import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(steps))


def test_the_cycle_finder_names_the_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"b": 9}, "d": {}}
    assert find_cycle(graph) == ["b", "c", "b"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_imports_inside_functions_and_type_checking_blocks_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ._base import ModelAdapter\n"
        "def hidden():\n"
        "    from . import convert, get_adapter\n"
        "    import xvit.methods.gradmask\n"
    )
    assert imports_in(source, "xvit.models.hf_vit", "xvit.models") == {
        "xvit.models._base": 3,
        "xvit.models": 5,  # the package's __init__ runs for any name taken from it
        "xvit.models.convert": 5,
        "xvit.methods.gradmask": 6,
    }


def test_every_module_has_a_layer() -> None:
    missing = [name for name in MODULES if layer_of(name) is None]
    assert not missing, f"add these modules to a row of LAYERS in {__file__}: {missing}"


@pytest.mark.parametrize("name", _cases(MODULES, PENDING_LAYERS))
def test_imports_run_downhill(name: str) -> None:
    problems = violations(name)
    assert not problems, "\n".join(problems)


# ``python -m xvit`` runs the command line when imported: it is only read, not imported
@pytest.mark.parametrize(
    "name", _cases([m for m in MODULES if m != "xvit.__main__"], PENDING_IMPORTS)
)
def test_every_module_imports_by_its_dotted_path(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"import {name} as module", namespace)  # as a user writes it, e.g. gradmask's file
    assert namespace["module"] is importlib.import_module(name), (
        f"`import {name} as module` gives {namespace['module']!r}: an attribute of the parent "
        f"package has the submodule's name"
    )
