"""Targets by class name: where the names come from (HF id2label, timm label names and
ImageNet heads, xvit checkpoints, converted twins), how a name is matched, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, NUM_CLASSES, model_input
from xvit.cli import main
from xvit.data.digits import CLASS_NAMES

ANIMALS = ("tiger cat", "tabby, tabby cat", "Persian cat", "crane", "crane, derrick")
assert len(ANIMALS) == NUM_CLASSES  # names for conftest's tiny models


def _tiny_timm(num_classes: int, **kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=num_classes,
        embed_dim=16,
        depth=1,
        num_heads=2,
        img_size=16,
        patch_size=8,
        **kw,
    ).eval()


def _tiny_hf(id2label: dict[int, str] | None) -> nn.Module:
    """conftest's tiny HF ViT (NUM_CLASSES classes), with these labels or HF's placeholders."""
    model = MODEL_FACTORIES["hf-vit"]()
    if id2label:
        model.config.id2label = id2label
    return model


def _timm_named(names=ANIMALS) -> nn.Module:
    model = _tiny_timm(len(names))
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": tuple(names)}
    return model


def _targets(model: nn.Module, target, n: int = 2) -> list[int]:
    x = model_input(model, batch=n)
    return xvit.explain("attention", model, x, target=target).targets.tolist()


@pytest.fixture(params=["timm", "hf"])
def named(request) -> nn.Module:
    if request.param == "hf":
        return _tiny_hf(dict(enumerate(ANIMALS)))
    return _timm_named()


def test_a_name_an_int_and_mixed_lists(named) -> None:
    assert _targets(named, "Persian cat") == [2, 2]
    assert _targets(named, ["tiger cat", 4]) == [0, 4]
    e = xvit.explain("attention", named, model_input(named, batch=1), target="tiger cat")
    assert e.class_names == ["tiger cat"]


def test_exact_first_then_case_insensitive_then_synonyms(named) -> None:
    assert _targets(named, "persian CAT", n=1) == [2]
    assert _targets(named, "tabby cat", n=1) == [1]  # a synonym of "tabby, tabby cat"
    assert _targets(named, "crane", n=1) == [3]  # the whole label beats the synonym of 4
    assert _targets(named, "derrick", n=1) == [4]


def test_unknown_name_suggests_close_ones(named) -> None:
    with pytest.raises(xvit.InvalidInputError, match=r"did you mean 'tiger cat' \(0\)") as info:
        _targets(named, "tigre cat")
    assert "'Persian cat'" in str(info.value)  # few classes: all are listed


def test_ambiguous_name_lists_the_classes() -> None:
    model = _timm_named(("crane", "crane", "heron"))
    with pytest.raises(xvit.InvalidInputError, match=r"ambiguous: classes 0 .*, 1 "):
        _targets(model, "crane")


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_a_name_on_a_model_without_names_asks_for_an_index(kind) -> None:
    model = _tiny_timm(NUM_CLASSES) if kind == "timm" else _tiny_hf(None)
    assert xvit.get_adapter(model).class_names() is None  # HF's LABEL_i are no names
    with pytest.raises(xvit.InvalidInputError, match=r"no class names; pass a class index"):
        _targets(model, "cat")
    assert _targets(model, 3) == [3, 3]


def test_imagenet_heads_use_timms_imagenet_names() -> None:
    model = _tiny_timm(1000)
    assert _targets(model, "tabby cat", n=1) == [281]
    with pytest.raises(xvit.InvalidInputError, match=r"did you mean 'goldfish' \(1\)"):
        _targets(model, "goldfsh", n=1)
    with pytest.raises(xvit.InvalidInputError, match=r"ambiguous: classes 134 .*517"):
        _targets(model, "crane", n=1)  # the bird and the machine
    big = _tiny_timm(21843)  # ImageNet-21k (Google)
    names = xvit.get_adapter(big).class_names()
    assert names is not None and len(names) == 21843 and names[0] == "organism, being"


def test_label_names_with_descriptions_from_a_timm_hub_config() -> None:
    model = _tiny_timm(2)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "label_names": {"0": "n01", "1": "n02"},
        "label_descriptions": {"n01": "sea otter", "n02": "river otter"},
    }
    assert xvit.get_adapter(model).class_names() == ("sea otter", "river otter")
    assert _targets(model, "river otter", n=1) == [1]


def test_names_cross_between_timm_and_hf_both_ways() -> None:
    timm_model = _timm_named()
    hf = xvit.timm_to_hf(timm_model)
    assert hf.config.id2label == dict(enumerate(ANIMALS))
    assert hf.config.label2id["crane"] == 3
    back = xvit.hf_to_timm(hf)
    assert xvit.get_adapter(back).class_names() == ANIMALS
    assert xvit.get_adapter(xvit.hf_to_timm(_tiny_hf(None))).class_names() is None


def _save_named(path: Path, names) -> None:
    kwargs = dict(num_classes=3, embed_dim=16, depth=1, num_heads=2, img_size=16, patch_size=8)
    xvit.save_checkpoint(
        timm.create_model("vit_tiny_patch16_224", **kwargs),
        path,
        timm_name="vit_tiny_patch16_224",
        model_kwargs=kwargs,
        preprocessing=xvit.Preprocessing(size=(16, 16)),
        class_names=names,
    )


def test_checkpoints_keep_class_names(tmp_path: Path) -> None:
    path = tmp_path / "named.safetensors"
    _save_named(path, ["ant", "bee", "wasp"])
    assert xvit.get_adapter(xvit.load_checkpoint(path)).class_names() == ("ant", "bee", "wasp")
    with pytest.raises(xvit.InvalidInputError, match="2 names for a model with 3 classes"):
        _save_named(path, ["ant", "bee"])


@pytest.mark.parametrize("spec", ["xvit:digits-vit", "xvit:digits-deit"])
def test_shipped_models_and_their_hf_twins_carry_the_digit_names(spec) -> None:
    for twin in ("-hf", ""):
        adapter = xvit.get_adapter(xvit.load_model(spec + twin))
        assert adapter.class_name(9) == "9"  # the HF twins said LABEL_9
        assert adapter.class_names() == CLASS_NAMES == tuple(str(d) for d in range(10))


def test_cli_target_takes_an_index_or_a_name(tmp_path: Path) -> None:
    ckpt = tmp_path / "named.safetensors"
    _save_named(ckpt, ["ant", "bee", "wasp"])
    image = tmp_path / "bug.png"
    Image.new("RGB", (20, 20), (30, 30, 30)).save(image)
    runner = CliRunner()
    args = ["explain", str(image), "-m", "attention", "--model", str(ckpt), "--out"]
    args.append(str(tmp_path / "out"))
    for target, shown in (("2", "class 2 (wasp)"), ("Bee", "class 1 (bee)")):
        result = runner.invoke(main, [*args, "--target", target])
        assert result.exit_code == 0, result.output
        assert shown in result.output
    result = runner.invoke(main, [*args, "--target", "wsap"])
    assert result.exit_code == 2
    assert "unknown class name 'wsap'; did you mean 'wasp' (2)?" in result.output
