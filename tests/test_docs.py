"""Documentation that cannot rot.

- The doctests of every xvit module run, and every public function and class has one.
- The Python blocks of README.md and docs/**/*.md run, in order, as a reader would paste them
  (a block marked ``<!-- skip: reason -->`` needs data xvit cannot ship and is only compiled);
  blocks that list a repository file (first line ``# path/of/file``) equal that file.
- The parts generated from the registry (method list, method pages) are up to date, and
  every registered method has its page.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import xvit

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PUBLIC_MODULES = ["xvit", "xvit.bench", "xvit.data", "xvit.methods", "xvit.metrics"]
PUBLIC_MODULES += ["xvit.models", "xvit.viz"]
MODULES = ["xvit"] + [
    m.name for m in pkgutil.walk_packages(xvit.__path__, "xvit.") if m.name != "xvit.__main__"
]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip:\s*(?P<reason>[^>]+?)\s*-->\s*$")


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- doctests ----------------------------------------------------------------------------
@pytest.mark.parametrize("module_name", MODULES)
def test_module_doctests(module_name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may save pictures
    module = importlib.import_module(module_name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {module_name}"


def _public_objects() -> Iterator[tuple[str, object]]:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj
    for registry in (xvit.method_registry, importlib.import_module("xvit.metrics").metrics):
        for name, cls in registry.items():
            if cls.__module__.startswith("xvit."):
                yield f"{registry.kind} {name}", cls


def test_every_public_function_and_class_has_an_example() -> None:
    missing = sorted(
        {name for name, obj in _public_objects() if ">>>" not in (inspect.getdoc(obj) or "")}
    )
    assert not missing, "no docstring example (>>>) for: " + ", ".join(missing)


def test_every_method_and_metric_names_its_paper() -> None:
    missing = [
        name
        for name, obj in _public_objects()
        if name.startswith(("method ", "metric ")) and "References:" not in inspect.getdoc(obj)
    ]
    assert not missing, "no References: section in " + ", ".join(missing)


# --- markdown ----------------------------------------------------------------------------
def _blocks(path: Path) -> list[tuple[str, str, str | None, int]]:
    """(language, code, skip reason, line) of every fenced block of a markdown file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        language = match.group("info").strip().split(" ")[0]
        out.append((language, match.group("body"), skip.group("reason") if skip else None, line))
    return out


def _listed_file(code: str) -> Path | None:
    first = code.split("\n", 1)[0]
    if first.startswith("# "):
        candidate = ROOT / first[2:].strip()
        if candidate.is_file():
            return candidate
    return None


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture
def plugin_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The example plugin on the path for docs/plugins.md, as its reader has it installed."""
    from test_plugin_example import lay_out_plugin, plugin_on_path

    with plugin_on_path(lay_out_plugin(tmp_path_factory.mktemp("plugin"))):
        yield


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_markdown_code_blocks(path: Path, tmp_path: Path, monkeypatch, request) -> None:
    if path.name == "plugins.md":
        request.getfixturevalue("plugin_installed")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for language, code, skip, line in _blocks(path):
        where = f"{_rel(path)}:{line}"
        assert language, f"{where}: give the code block a language (python, bash, text, ...)"
        listed = _listed_file(code)
        if listed is not None:
            assert code.split("\n", 1)[1] == listed.read_text(), (
                f"{where} lists {_rel(listed)} but differs from it; copy the file again"
            )
            continue
        if language != "python":
            continue
        compiled = compile(code, where, "exec")
        if skip is None:
            exec(compiled, namespace)


def test_python_blocks_are_executed_not_skipped_silently() -> None:
    skipped = [
        (_rel(p), line, reason)
        for p in MARKDOWN
        for language, _, reason, line in _blocks(p)
        if language == "python" and reason is not None
    ]
    # only the ImageNet examples may be skipped: everything else runs offline
    assert all("ImageNet" in reason for _, _, reason in skipped), skipped


def test_readme_gives_the_setup_commands_and_the_gallery() -> None:
    readme = (ROOT / "README.md").read_text()
    shell = "\n".join(code for lang, code, _, _ in _blocks(ROOT / "README.md") if lang == "bash")
    for command in ('pip install -e ".[dev]"', "xvit demo", "python -m pytest -q"):
        assert command in shell, command
    assert "(docs/images/gallery.png)" in readme
    assert (ROOT / "docs" / "images" / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    assert (ROOT / "scripts" / "make_gallery.py").exists()


def test_relative_links_resolve() -> None:
    broken = []
    for path in MARKDOWN:
        text = FENCE.sub("", path.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{_rel(path)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)


# --- generated from the registry ---------------------------------------------------------
def test_generated_docs_are_up_to_date() -> None:
    make_docs = _load_script("make_docs")
    stale = [_rel(p) for p in make_docs.stale()]
    assert not stale, f"out of date: {stale}; run python scripts/make_docs.py"


@pytest.mark.parametrize("name", xvit.list_methods())
def test_every_registered_method_has_a_page(name: str) -> None:
    cls = xvit.get_method(name)
    if not cls.__module__.startswith("xvit."):
        pytest.skip(f"{name} is a plugin ({cls.__module__}); its own package documents it")
    page = ROOT / "docs" / "methods" / f"{name}.md"
    assert page.exists(), f"no docs page for {name}: run python scripts/make_docs.py"
    text = page.read_text()
    make_docs = _load_script("make_docs")
    assert make_docs.method_block(cls) in text
    cost = text.split("## Cost", 1)[1].split("\n## ", 1)[0]
    assert make_docs.PLACEHOLDER not in cost and "forward" in cost, f"{page}: write its cost"
    examples = [code for lang, code, _, _ in _blocks(page) if lang == "python"]
    assert any(f'"{name}"' in code and "xvit.explain(" in code for code in examples)
    for default_name, default in cls.defaults().items():
        assert f"| `{default_name}` | `{default!r}` |" in text
    readme = (ROOT / "README.md").read_text()
    assert f"[`{name}`](docs/methods/{name}.md)" in readme


def test_adapters_page_has_the_generated_family_by_method_table() -> None:
    make_docs = _load_script("make_docs")
    table = make_docs.families_table()
    assert table in (ROOT / "docs" / "adapters.md").read_text()
    for name, cls in xvit.models.adapters.items():
        if cls.__module__.startswith("xvit."):
            assert f"| `{name}` |" in table, name
    for method in make_docs.builtin_methods():
        assert f"`{method.name}`" in table.splitlines()[-len(make_docs.builtin_adapters()) - 2]
