"""The shipped digit models: loadable by name, trained (held-out accuracy), HF twins agree."""

from __future__ import annotations

import pytest
import torch

import xvit
from xvit.data import get_dataset
from xvit.data.digits import CANVAS_SIZE, PATCH_SIZE
from xvit.models import zoo

SHIPPED = sorted(zoo.SHIPPED)
HELD_OUT = 100


def _needs(name: str) -> None:
    path = zoo.shipped_path(name)
    if not path.is_file():
        pytest.skip(
            f"{path.name} is not shipped yet: train it with benchmarks/train_digits.py "
            f"(writes xvit/assets/)"
        )


@pytest.fixture(scope="module")
def held_out() -> tuple[list, torch.Tensor]:
    samples = list(get_dataset("digits", split="test", n=HELD_OUT, seed=0))
    return [s.image for s in samples], torch.tensor([s.label for s in samples])


def _logits(model: torch.nn.Module, images: list) -> torch.Tensor:
    adapter = xvit.get_adapter(model)
    x = torch.stack([adapter.preprocessing(im) for im in images])
    with torch.inference_mode():
        return adapter.forward_logits(x)


def test_every_shipped_model_has_a_timm_and_an_hf_alias():
    for name in SHIPPED:
        assert f"xvit:{name}" in xvit.model_aliases
        assert f"xvit:{name}-hf" in xvit.model_aliases


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_small_and_carries_its_preprocessing(name):
    _needs(name)
    assert zoo.shipped_path(name).stat().st_size < 5e6
    model = xvit.load_model(f"xvit:{name}")
    adapter = xvit.get_adapter(model)
    assert adapter.preprocessing.size == (CANVAS_SIZE, CANVAS_SIZE)
    assert adapter.geometry.grid() == (CANVAS_SIZE // PATCH_SIZE,) * 2 != (14, 14)
    assert adapter.num_classes == 10
    assert not model.training
    expected_prefix = 2 if "deit" in name else 1
    assert adapter.geometry.num_prefix_tokens == expected_prefix


@pytest.mark.parametrize("twin", ["", "-hf"])
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_accurate_on_held_out_digits(name, twin, held_out):
    _needs(name)
    images, labels = held_out
    model = xvit.load_model(f"xvit:{name}{twin}")
    assert xvit.get_adapter(model).framework == ("transformers" if twin else "timm")
    accuracy = (_logits(model, images).argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.9, f"xvit:{name}{twin}: held-out accuracy {accuracy:.2f}"


@pytest.mark.parametrize("name", SHIPPED)
def test_hf_twin_computes_the_same_logits(name, held_out):
    _needs(name)
    images, _ = held_out
    timm_logits = _logits(xvit.load_model(f"xvit:{name}"), images[:20])
    hf_logits = _logits(xvit.load_model(f"xvit:{name}-hf"), images[:20])
    torch.testing.assert_close(hf_logits, timm_logits, atol=1e-4, rtol=1e-4)
