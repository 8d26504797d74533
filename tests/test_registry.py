"""Method registry: lookups, wildcards, errors, and plugins through real entry points."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import xvit
from dist_info import on_sys_path, write_distribution
from xvit._registry import Registry
from xvit.cli import main


def test_lookup_by_name_and_class() -> None:
    cls = xvit.get_method("gradmask")
    assert xvit.get_method(cls) is cls
    assert "gradmask" in xvit.list_methods()
    assert xvit.list_methods("grad*") == [n for n in xvit.list_methods() if n.startswith("grad")]
    assert xvit.list_methods("zzz*") == []


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(xvit.UnknownNameError) as info:
        xvit.get_method("gradmsk")
    msg = str(info.value)
    for name in xvit.list_methods():
        assert name in msg


def test_double_registration_warns() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.warns(UserWarning, match="registered twice"):
        reg.register("a", 2)
    assert reg.get("a") == 2


def test_unknown_parameter_names_the_accepted_ones() -> None:
    with pytest.raises(xvit.ParameterError, match="masks_per_layer"):
        xvit.make_explainer("gradmask", mask_per_layer=4)
    with pytest.raises(xvit.ParameterError, match="Did you mean 'num_masks'"):
        xvit.make_explainer("rise", masks=4)


def _registries() -> dict[str, Registry]:
    from xvit.data import datasets
    from xvit.metrics import metrics
    from xvit.models import adapters

    registries = [xvit.method_registry, metrics, adapters, xvit.model_aliases, datasets]
    return {r.kind: r for r in registries}


@pytest.mark.parametrize(
    ("kind", "typo", "meant"),
    [
        ("method", "gradmsk", "gradmask"),
        ("method", "Rollout", "rollout"),
        ("metric", "insertoin", "insertion"),
        ("model adapter", "tim", "timm"),
        ("model alias", "xvit:digit-vit", "xvit:digits-vit"),
        ("dataset", "digts", "digits"),
    ],
)
def test_every_registry_suggests_the_name_meant(kind: str, typo: str, meant: str) -> None:
    registry = _registries()[kind]
    with pytest.raises(xvit.UnknownNameError) as info:
        registry.get(typo)
    message = str(info.value)
    assert f"Did you mean {meant!r}" in message
    assert message.endswith(f"Known {kind}s: {', '.join(registry.names())}")


def test_no_suggestion_for_a_name_like_none() -> None:
    with pytest.raises(xvit.UnknownNameError) as info:
        xvit.get_method("qqq")
    assert "Did you mean" not in str(info.value)


def _write_plugin(root: Path, dist: str, module: str, source: str, entry: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    name, value = (part.strip() for part in entry.split("="))
    write_distribution(root, dist, "1.0", {"xvit.methods": {name: value}})


@pytest.fixture
def plugin_path(tmp_path: Path):
    """Two installed-looking distributions: a working plugin and a broken one."""
    _write_plugin(
        tmp_path,
        "xvit_centre_plugin",
        "xvit_centre_plugin",
        """
        import torch
        import xvit

        class Centre(xvit.Explainer):
            name = "centre"
            summary = "a test plugin: distance to the image centre"
            def __init__(self, *, power: float = 1.0):
                self.power = power
            def compute(self, adapter, inputs, target):
                gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
                yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
                d = ((yy - (gh - 1) / 2) ** 2 + (xx - (gw - 1) / 2) ** 2).float()
                m = (-(d ** self.power)).to(inputs.device)
                return m.expand(len(inputs), gh, gw).clone()
        """,
        "centre = xvit_centre_plugin:Centre",
    )
    _write_plugin(
        tmp_path,
        "xvit_broken_plugin",
        "xvit_broken_plugin",
        "raise ImportError('this plugin is broken on purpose')\n",
        "broken = xvit_broken_plugin:Nothing",
    )
    modules = ["xvit_centre_plugin", "xvit_broken_plugin"]
    with on_sys_path(tmp_path, modules=modules, methods=["centre"]):
        yield tmp_path


def test_plugin_found_usable_and_broken_one_skipped(plugin_path: Path, timm_vit) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = xvit.list_methods()
    assert "centre" in names
    assert "broken" not in names
    assert any("broken" in str(w.message) for w in caught)

    x = torch.randn(1, 3, 32, 32)
    e = xvit.explain("centre", timm_vit, x, power=2.0)
    assert e.map.shape == (1, 4, 4)
    assert int(e.map[0].argmax()) in {5, 6, 9, 10}  # a centre patch of the 4 x 4 grid
    assert e.params == {"power": 2.0}

    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    assert "centre" in result.output and "a test plugin" in result.output
