"""The example plugin (examples/plugin) shows up everywhere a built-in method does.

Nothing is installed: the fixture lays the package out as ``pip install`` would, in a temporary
folder: a copy of its modules and a ``xvit_saliency-<version>.dist-info`` whose entry points are
read from the example's own ``pyproject.toml``. With that folder first on ``sys.path``, xvit
finds the method only through that entry point, whether or not the example is also installed
in this environment (as a user following docs/plugins.md has it).
"""

from __future__ import annotations

import doctest
import inspect
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import xvit
from conftest import MODEL_FACTORIES, model_input
from dist_info import on_sys_path, write_distribution
from xvit.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli on 3.10
    import tomli as tomllib

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"
MODULE = "xvit_saliency"
METHOD = "saliency"


def lay_out_plugin(site: Path) -> Path:
    """examples/plugin as ``pip install`` lays it out, in ``site``: its packages (from
    ``[tool.setuptools.packages.find]``) and its dist-info (name, version and entry points
    from ``[project]``). Returns ``site``."""
    pyproject = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    project = pyproject["project"]
    for where in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        for package in sorted((EXAMPLE / where).iterdir()):
            if (package / "__init__.py").is_file():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(package, site / package.name, ignore=ignore)
    write_distribution(site, project["name"], project["version"], project["entry-points"])
    return site


@contextmanager
def plugin_on_path(site: Path, *, first: bool = True) -> Iterator[Path]:
    """The plugin laid out in ``site`` on ``sys.path`` for the block (see ``on_sys_path``)."""
    with on_sys_path(site, modules=[MODULE], methods=[METHOD], first=first) as path:
        yield path


def _origin() -> Path:
    """The file the registered ``saliency`` method was loaded from."""
    return Path(inspect.getfile(xvit.get_method(METHOD)))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lay_out_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def plugin(plugin_site: Path) -> Iterator[None]:
    with plugin_on_path(plugin_site):
        yield


@pytest.mark.parametrize("also_installed", [False, True], ids=["as-is", "installed-copy"])
def test_found_through_its_entry_point(
    plugin_site: Path, also_installed: bool, tmp_path: Path
) -> None:
    entry = next(plugin_site.glob("xvit_saliency-*.dist-info")) / "entry_points.txt"
    assert "[xvit.methods]\nsaliency = xvit_saliency:Saliency\n" in entry.read_text()
    with ExitStack() as stack:
        if also_installed:  # another copy behind site-packages, already loaded, as a user has it
            stack.enter_context(plugin_on_path(lay_out_plugin(tmp_path), first=False))
            assert METHOD in xvit.list_methods()  # loaded from an installed copy
        before = xvit.list_methods()
        origin = _origin() if METHOD in before else None
        with plugin_on_path(plugin_site):
            assert METHOD in xvit.list_methods()
            cls = xvit.get_method(METHOD)
            assert cls.__module__ == MODULE and cls.name == METHOD
            assert _origin().is_relative_to(plugin_site)  # through this dist-info's entry point
        assert xvit.list_methods() == before  # and afterwards xvit sees what it saw before
        assert (_origin() if METHOD in before else None) == origin


def test_shown_by_xvit_list(plugin) -> None:
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.strip().startswith("saliency"))
    assert "absolute input gradient" in line
    assert "Simonyan" in result.output


def _reference_saliency(model: torch.nn.Module, x: torch.Tensor, target: list[int]):
    """The paper's definition, by hand: |d logit_c / d x|, maximised over the channels."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    logits = getattr(out, "logits", out)  # HF models return an output object
    logits[torch.arange(len(target)), torch.tensor(target)].sum().backward()
    return x.grad.abs().amax(dim=1)


@pytest.mark.parametrize("model_name", ["timm-vit-rect", "hf-deit-teacher"])
def test_explain_matches_the_definition(plugin, model_name: str) -> None:
    model = MODEL_FACTORIES[model_name]()
    x = model_input(model)
    target = [1, 3]
    e = xvit.explain("saliency", model, x, target=target)
    reference = _reference_saliency(model, x, target)  # xvit left the model as it was
    torch.testing.assert_close(e.map, reference, rtol=1e-5, atol=1e-7)
    assert e.method == "saliency" and e.params == {"per_patch": False}

    # per_patch sums each patch of the model's own grid (rectangular for timm-vit-rect)
    geo = xvit.get_adapter(model).geometry
    (gh, gw), (ph, pw) = geo.grid(), geo.patch_size
    patches = xvit.explain("saliency", model, x, target=target, per_patch=True).map
    assert patches.shape == (2, gh, gw)
    for r in range(gh):
        for c in range(gw):
            cell = reference[:, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].sum(dim=(1, 2))
            torch.testing.assert_close(patches[:, r, c], cell, rtol=1e-5, atol=1e-6)


def test_bad_parameter_is_an_xvit_error(plugin) -> None:
    with pytest.raises(xvit.ParameterError, match="per_patch"):
        xvit.explain(
            "saliency", MODEL_FACTORIES["timm-vit"](), torch.randn(1, 3, 32, 32), per_patch="yes"
        )


def test_its_docstring_example_runs(plugin) -> None:
    import importlib

    module = importlib.import_module(MODULE)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


def test_included_in_bench_methods_all(plugin, tmp_path: Path, monkeypatch) -> None:
    # every method at its registered cheap settings (quick_params), so "all" stays a tiny run
    for name in xvit.list_methods():
        cls = xvit.get_method(name)
        for key, value in cls.quick_params.items():
            monkeypatch.setitem(cls.__init__.__kwdefaults__, key, value)
    out = tmp_path / "bench"
    args = ["bench", "--methods", "all", "--n", "2", "--metrics", "pointing_game"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    # every method that can run here (one whose optional extra is missing is skipped)
    usable = [n for n in xvit.list_methods() if not xvit.get_method(n).unavailable_reason()]
    for name in usable:
        assert f"| {name} | 2 |" in table
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["method"] for r in records}) == usable
    assert sum(r["method"] == "saliency" for r in records) == 2
    assert (out / "times.png").exists()
