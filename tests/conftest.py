"""Tiny models built from configs (random weights, no downloads), shared by all tests."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from importlib import metadata

import pytest
import timm
import torch
from torch import nn

import xvit

NUM_CLASSES = 5
HIDDEN = 32
DEPTH = 3
HEADS = 2
#: The tiny HuggingFace ViT/DeiT config of the tests (``image_size`` is given per model).
HF_CONFIG = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=DEPTH,
    num_attention_heads=HEADS,
    intermediate_size=4 * HIDDEN,
    patch_size=8,
    num_labels=NUM_CLASSES,
    layer_norm_eps=1e-6,
)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in each pytest-xdist worker, and in the processes it starts: the
    workers already keep every core busy, and threads waiting for a core slow the tiny
    models' many small operations down instead of up."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by fixture scope
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked ``slow`` first, and skip the tests marked ``transformers4`` unless
    transformers 4.x is installed.

    Slow tests first: pytest-xdist's workers then run them beside the many quick ones, instead
    of one worker running a long test alone at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # a stable sort
    version = metadata.version("transformers")
    if version.split(".")[0] == "4":
        return
    skip = pytest.mark.skip(
        reason=f"needs the transformers 4.x module layout; this environment has transformers "
        f"{version} (.ci/run runs these tests in a second environment made with "
        f"pip install -e '.[dev]' -r .ci/transformers4.txt)"
    )
    for item in items:
        if item.get_closest_marker("transformers4") is not None:
            item.add_marker(skip)


def _timm(name: str, **kw) -> nn.Module:
    base = dict(
        pretrained=False,
        num_classes=NUM_CLASSES,
        embed_dim=HIDDEN,
        depth=DEPTH,
        num_heads=HEADS,
        img_size=32,
        patch_size=8,
    )
    base.update(kw)
    torch.manual_seed(0)
    return timm.create_model(name, **base).eval()


def _hf(kind: str) -> nn.Module:
    from transformers import (
        DeiTConfig,
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    kw = dict(HF_CONFIG, image_size=32)
    torch.manual_seed(0)
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(**kw)).eval()
    if kind == "deit":
        return DeiTForImageClassification(DeiTConfig(**kw)).eval()
    return DeiTForImageClassificationWithTeacher(DeiTConfig(**kw)).eval()


def _copies(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A factory that runs ``build`` once and returns a fresh deep copy of its model on every
    call, leaving torch's global generator where ``build`` leaves it, as a new build would.

    Building a timm model costs about seven times a copy, and the suite builds hundreds. Each
    test still gets a model of its own to change as it likes. Under another default device
    (``with torch.device("meta")``) the model is built there, as asked.
    """
    built: list[tuple[nn.Module, torch.Tensor]] = []

    def factory() -> nn.Module:
        if torch.empty(0).device.type != "cpu":
            return build()
        if not built:
            model = build()
            built.append((model, torch.get_rng_state()))
        model, rng = built[0]
        torch.set_rng_state(rng)
        return copy.deepcopy(model)

    return factory


#: name -> factory of a tiny model; every adapter and token layout is represented.
#: Every registered method that can run here: one whose optional extra is missing (attnlrp
#: without lxt) is left out; tests/test_contract.py checks that it refuses clearly instead.
USABLE_METHODS = [n for n in xvit.list_methods() if not xvit.get_method(n).unavailable_reason()]

MODEL_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    name: _copies(build)
    for name, build in {
        "timm-vit": lambda: _timm("vit_tiny_patch16_224"),
        "timm-vit-rect": lambda: _timm("vit_tiny_patch16_224", img_size=(24, 40)),
        "timm-deit-distilled": lambda: _timm("deit_tiny_distilled_patch16_224"),
        "timm-vit-registers": lambda: _timm("vit_tiny_patch16_224", reg_tokens=3),
        "timm-vit-avgpool": lambda: _timm(
            "vit_tiny_patch16_224", global_pool="avg", class_token=False, fc_norm=True
        ),
        "hf-vit": lambda: _hf("vit"),
        "hf-deit": lambda: _hf("deit"),
        "hf-deit-teacher": lambda: _hf("teacher"),
    }.items()
}


def model_input(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random preprocessed batch of the model's input size."""
    import xvit

    geo = xvit.get_adapter(model).geometry
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, geo.in_chans, *geo.image_size, generator=g)


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def any_model(request: pytest.FixtureRequest) -> nn.Module:
    """Each tiny model in turn."""
    return MODEL_FACTORIES[request.param]()


@pytest.fixture
def timm_vit() -> nn.Module:
    return MODEL_FACTORIES["timm-vit"]()


@pytest.fixture
def hf_vit() -> nn.Module:
    return MODEL_FACTORIES["hf-vit"]()
