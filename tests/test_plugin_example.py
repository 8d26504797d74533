"""The example plugin (examples/plugin) installs and shows up everywhere a built-in method does.

The package is installed for real (``pip install --no-deps --no-index``, no network) from a copy
of its folder into a temporary target, which is put on ``sys.path``: xvit then finds the method
only through the entry point that the example's own ``pyproject.toml`` declares.
"""

from __future__ import annotations

import doctest
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import xvit
from conftest import MODEL_FACTORIES, model_input
from xvit.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"
MODULE = "xvit_saliency"


def install_plugin(tmp: Path) -> Path:
    """Install examples/plugin into ``tmp/site`` (built from a copy, so the repository stays
    clean) and return that folder."""
    source = tmp / "plugin-src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--quiet", "--target", str(site), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def activate(site: Path) -> Iterator[None]:
    """Put an installed plugin on the path for the duration of a test, then remove it."""
    sys.path.insert(0, str(site))
    xvit.methods.refresh()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop(MODULE, None)
        if "saliency" in xvit.methods._entries:
            xvit.methods.unregister("saliency")
        xvit.methods.refresh()


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def plugin(plugin_site: Path) -> Iterator[None]:
    yield from activate(plugin_site)


def test_installed_through_its_entry_point(plugin_site: Path) -> None:
    assert "saliency" not in xvit.list_methods()  # not before it is on the path
    entry = next(plugin_site.glob("xvit_saliency-*.dist-info")) / "entry_points.txt"
    assert "[xvit.methods]" in entry.read_text()
    gen = activate(plugin_site)
    next(gen)
    try:
        cls = xvit.get_method("saliency")
        assert cls.__module__ == MODULE and cls.name == "saliency"
    finally:
        gen.close()
    assert "saliency" not in xvit.list_methods()  # and gone again afterwards


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
    for name in xvit.list_methods():
        assert f"| {name} | 2 |" in table
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["method"] for r in records}) == xvit.list_methods()
    assert sum(r["method"] == "saliency" for r in records) == 2
    assert (out / "times.png").exists()
