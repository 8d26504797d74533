"""Regenerate the parts of README.md and docs/ that come from the method registry.

Generated text sits between ``<!-- begin generated: KEY -->`` and ``<!-- end generated: KEY -->``
markers; everything outside them is written by hand and left alone. What is generated:

- ``README.md`` and ``docs/index.md``, key ``methods``: the table of built-in methods with their
  one-line summaries and papers;
- ``docs/metrics.md``, key ``metrics``: the built-in metrics with their class and functional
  twin, direction, what they need, their ``cost`` and whether the ``default`` metric set
  (``xvit bench``, ``xvit demo``) runs them or they are ``expensive`` (``--metrics all``);
- ``docs/adapters.md``, key ``families``: the built-in adapters in lookup order with the models
  they read, and which methods each can run (the adapter's ``capabilities`` cover the method's
  ``capabilities_needed()``);
- ``docs/methods/<name>.md``, key ``method``: the method's paper, what it computes and its
  parameters with their defaults, all read from the class (its docstring's description,
  ``Args:`` and ``References:`` sections, and ``__init__``'s defaults). A method without a
  page gets one, with a cost section and an example to fill in.

``tests/test_docs.py`` fails when any generated part is out of date.

Usage:
    python scripts/make_docs.py           # rewrite the generated parts in place
    python scripts/make_docs.py --check   # list what is out of date; exit 1 if anything is
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import xvit
from xvit.models._lookup import adapter_order

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Args", "Attributes", "Example", "Examples", "References", "Returns", "Raises")
PLACEHOLDER = "TODO: forwards and backwards per image."


def builtin_methods() -> list[type[xvit.Explainer]]:
    """The methods xvit itself ships (plugins document themselves), in name order."""
    classes = [xvit.get_method(name) for name in xvit.list_methods()]
    return [c for c in classes if c.__module__.startswith("xvit.methods.")]


def parse_docstring(cls: type) -> dict[str, str]:
    """The docstring's description (text outside sections) and each section's body."""
    out: dict[str, list[str]] = {"description": []}
    current = "description"
    for line in (inspect.getdoc(cls) or "").splitlines():
        header = line.strip().rstrip(":")
        if line.endswith(":") and not line.startswith(" ") and header in SECTIONS:
            current = header
            out[current] = []
        elif current != "description" and line and not line.startswith(" "):
            current = "description"
            out[current].append(line)
        else:
            out[current].append(line[4:] if current != "description" else line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def parse_args(text: str) -> dict[str, str]:
    """``name: meaning`` entries of an ``Args:`` section (continuation lines joined)."""
    args: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?: \([^)]*\))?: (.*)$", line)
        if match and not line.startswith(" "):
            name = match.group(1)
            args[name] = [match.group(2)]
        elif name is not None and line.strip():
            args[name].append(line.strip())
    return {k: " ".join(v) for k, v in args.items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def method_block(cls: type[xvit.Explainer]) -> str:
    """The generated part of a method's page."""
    doc = parse_docstring(cls)
    args = parse_args(doc.get("Args", ""))
    flags = [
        f"family: {cls.family or 'n/a'}",
        f"gradients: {'yes' if cls.needs_gradients else 'no'}",
        f"attention maps: {'yes' if cls.needs_attention else 'no'}",
        f"randomised: {'yes (takes a seed)' if cls.randomized else 'no'}",
    ]
    references = " ".join(doc.get("References", cls.paper).split())
    lines = [
        f"**Paper:** {references}",
        "",
        f"`xvit.get_method({cls.name!r})` is `{cls.__module__}.{cls.__name__}`; "
        + "; ".join(flags)
        + ".",
        "",
        "## What it computes",
        "",
        doc["description"],
        "",
        "## Parameters",
        "",
    ]
    defaults = cls.defaults()
    names = cls.param_names()
    if not names:
        lines.append("None: the method takes no parameters.")
    else:
        lines += ["| parameter | default | meaning |", "|---|---|---|"]
        for name in names:
            default = f"`{defaults[name]!r}`" if name in defaults else "(required)"
            lines.append(f"| `{name}` | {default} | {_cell(args.get(name, ''))} |")
    if cls.quick_params:
        quick = ", ".join(f"`{k}={v!r}`" for k, v in cls.quick_params.items())
        lines += ["", f"Cheap settings used by smoke tests: {quick}."]
    return "\n".join(lines)


def methods_table(link_prefix: str) -> str:
    """The table of built-in methods, linking each to its page."""
    lines = ["| method | what it does | paper |", "|---|---|---|"]
    for cls in builtin_methods():
        link = f"[`{cls.name}`]({link_prefix}{cls.name}.md)"
        lines.append(f"| {link} | {_cell(cls.summary)} | {_cell(cls.paper)} |")
    return "\n".join(lines)


def builtin_metrics() -> list[type]:
    """The metrics xvit itself ships, in name order."""
    from xvit.metrics import get_metric, list_metrics

    classes = [get_metric(name) for name in list_metrics()]
    return [c for c in classes if c.__module__.startswith("xvit.metrics.")]


def metrics_table() -> str:
    """The table of built-in metrics: class and twin, direction, needs, cost, default set."""
    import xvit.metrics.functional as functional

    lines = ["| metric | class / function | better | needs | cost | runs |", "|---" * 6 + "|"]
    for cls in builtin_metrics():
        twin = f"`{cls.name}`" if hasattr(functional, cls.name) else "-"
        needs = [
            text
            for flag, text in (
                (cls.needs_model, "the model"),
                (cls.needs_boxes, "ground-truth boxes"),
                (cls.needs_explainer, "the method (explains again)"),
            )
            if flag
        ]
        runs = "only by name or `all` (expensive)" if cls.expensive else "`default`"
        cells = [
            f"`{cls.name}`",
            f"`{cls.__name__}` / {twin}",
            "higher" if cls.higher_is_better else "lower",
            ", ".join(needs) or "the maps only",
            _cell(cls.cost or "not stated"),
            runs,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def builtin_adapters() -> list[tuple[str, type[xvit.ModelAdapter]]]:
    """(registered name, class) of the adapters xvit ships, in the order lookup asks them."""
    order = {cls: i for i, cls in enumerate(adapter_order())}
    ranked = sorted(xvit.models.adapters.items(), key=lambda item: order[item[1]])
    return [(name, cls) for name, cls in ranked if cls.__module__.startswith("xvit.")]


def families_table() -> str:
    """The adapters with their models, then family x method: ✓ where the adapter's
    capabilities cover what the method needs and the method ``supports`` the adapter (read
    from its class), else the missing capabilities or "refused"."""
    lines = ["| adapter | models |", "|---|---|"]
    for name, cls in builtin_adapters():
        lines.append(f'| `{cls.__name__}` (`"{name}"`) | {_cell(cls.description)} |')
    methods = builtin_methods()
    lines += ["", "| adapter | " + " | ".join(f"`{m.name}`" for m in methods) + " |"]
    lines.append("|---" * (len(methods) + 1) + "|")
    for name, cls in builtin_adapters():
        cells = []
        for method in methods:
            missing = [c for c in method.capabilities_needed() if c not in cls.capabilities]
            if missing:
                cells.append("needs " + ", ".join(missing))
            else:  # a method may narrow what it supports further (a family list)
                cells.append("✓" if method.supports(cls) else "refused")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, key: str, content: str, where: Path) -> str:
    begin, end = f"<!-- begin generated: {key} -->", f"<!-- end generated: {key} -->"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{where}: expected one {begin!r} and one {end!r} marker")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{content.strip()}\n{end}{tail}"


def new_page(cls: type[xvit.Explainer]) -> str:
    title = cls.__name__
    return (
        f"# {title} (`{cls.name}`)\n\n"
        "<!-- begin generated: method -->\n<!-- end generated: method -->\n\n"
        f"## Cost\n\n{PLACEHOLDER}\n\n"
        "## Example\n\n"
        "```python\nimport torch, xvit\n\n"
        'model = xvit.load_model("xvit:digits-vit")\n'
        f'e = xvit.explain("{cls.name}", model, torch.randn(1, 3, 64, 64))\n'
        "```\n"
    )


def planned(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file's intended text, by path."""
    out: dict[Path, str] = {}
    tables = ((root / "README.md", "docs/methods/"), (root / "docs" / "index.md", "methods/"))
    for path, prefix in tables:
        out[path] = replace_block(path.read_text(), "methods", methods_table(prefix), path)
    path = root / "docs" / "adapters.md"
    out[path] = replace_block(path.read_text(), "families", families_table(), path)
    path = root / "docs" / "metrics.md"
    out[path] = replace_block(path.read_text(), "metrics", metrics_table(), path)
    for cls in builtin_methods():
        path = root / "docs" / "methods" / f"{cls.name}.md"
        text = path.read_text() if path.exists() else new_page(cls)
        out[path] = replace_block(text, "method", method_block(cls), path)
    return out


def stale(root: Path = ROOT) -> list[Path]:
    """Generated files whose text on disk differs from what the registry gives."""
    return [p for p, text in planned(root).items() if not p.exists() or p.read_text() != text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if stale")
    args = parser.parse_args()
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"out of date: {path.relative_to(ROOT)}")
        sys.exit(1 if out_of_date else 0)
    for path, text in planned().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
