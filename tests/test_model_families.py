"""A model family xvit cannot explain is refused before any weights are downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from click.testing import CliRunner
from PIL import Image

import xvit
from xvit.cli import main
from xvit.models import _loading


class Downloaded(Exception):
    """Raised by the stand-ins of the hub functions: the loader went on to download."""


@pytest.fixture
def no_hub(monkeypatch) -> None:
    """Every way the loaders reach the hub raises :class:`Downloaded`."""

    def hub(*args, **kwargs):
        raise Downloaded

    real_create = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            raise Downloaded
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(_loading, "hub_reachable", hub)
    monkeypatch.setattr(timm, "create_model", create_model)


def _supported_listed(message: str) -> None:
    assert "its weights were not downloaded" in message
    for _, cls in xvit.models.adapters.items():
        assert cls.description in message


@pytest.mark.parametrize("name", ["resnet18", "swin_tiny_patch4_window7_224", "convnext_atto"])
def test_timm_families_are_refused_without_the_hub(no_hub, name: str) -> None:
    with pytest.raises(xvit.UnsupportedModelError, match=f"timm:{name}") as info:
        xvit.load_model(f"timm:{name}")
    _supported_listed(str(info.value))


def test_supported_timm_models_still_go_to_the_hub(no_hub) -> None:
    with pytest.raises(Downloaded):
        _loading._load_timm("vit_tiny_patch16_224")


def test_cli_refuses_resnet18_without_the_hub(no_hub, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    result = CliRunner().invoke(main, ["explain", str(image), "--model", "timm:resnet18"])
    assert result.exit_code == 2, result.output
    assert "timm:resnet18 (its weights were not downloaded): xvit cannot" in result.output


@pytest.fixture
def hf_config(monkeypatch) -> list:
    """``AutoConfig.from_pretrained`` answers the config put in the returned list (a small
    file, fetched first); fetching the weights raises :class:`Downloaded`."""
    from transformers import AutoConfig, AutoModelForImageClassification

    config: list = []

    def weights(*args, **kwargs):
        raise Downloaded

    monkeypatch.setattr(_loading, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: config[0])
    monkeypatch.setattr(AutoModelForImageClassification, "from_pretrained", weights)
    return config


@pytest.mark.parametrize("kind", ["resnet", "bert"])
def test_hf_families_are_refused_from_the_config_alone(hf_config, kind: str) -> None:
    from transformers import BertConfig, ResNetConfig

    hf_config.append(ResNetConfig() if kind == "resnet" else BertConfig())
    with pytest.raises(xvit.UnsupportedModelError, match=f"hf:some/{kind}") as info:
        xvit.load_model(f"hf:some/{kind}")
    _supported_listed(str(info.value))


@pytest.mark.parametrize("arch", ["DeiTForImageClassificationWithTeacher", None])
def test_supported_hf_models_still_fetch_their_weights(hf_config, arch) -> None:
    from transformers import DeiTConfig

    hf_config.append(DeiTConfig(architectures=[arch] if arch else None))
    with pytest.raises(xvit.ModelLoadError, match=r"hf:facebook/deit.*refused it \(Downloaded"):
        xvit.load_model("hf:facebook/deit")


def test_adapters_are_asked_by_priority_not_by_name() -> None:
    """An adapter for a narrower family (default priority) is asked before the built-in
    adapter of the whole family, whatever its registered name."""
    from timm.models.vision_transformer import VisionTransformer

    from xvit.models import TimmViTAdapter, adapters

    class NarrowViT(VisionTransformer):
        pass

    class NarrowAdapter(TimmViTAdapter):
        priority = 0

        @classmethod
        def matches(cls, model: object) -> bool:
            return isinstance(model, NarrowViT)

    model = NarrowViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    adapters.register("zzz-narrow", NarrowAdapter)
    try:
        assert type(xvit.get_adapter(model)) is NarrowAdapter
    finally:
        adapters.unregister("zzz-narrow")
    assert type(xvit.get_adapter(model)) is TimmViTAdapter
