"""The shape of the methods layer (issue 13): the registry no longer hides the subpackage,
``Explainer.attribute`` is a final, guarded call around ``compute``, parameters are declared,
seeds follow one rule and the mask-scoring kernel takes one options object."""

from __future__ import annotations

import hashlib
import importlib
import warnings

import numpy as np
import pytest
import torch

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit._forward import ForwardOptions
from xvit._registry import Registry
from xvit.methods._scoring import score_masks, sum_weighted_masks


# --- the registry and the subpackage -------------------------------------------------------
def test_the_subpackage_is_importable_by_its_dotted_path() -> None:
    import xvit.methods.gradmask as gm

    assert gm.GradMask is xvit.get_method("gradmask")
    assert importlib.import_module("xvit.methods").__name__ == "xvit.methods"
    assert isinstance(xvit.method_registry, Registry)
    assert xvit.methods.method_registry is xvit.method_registry


def test_the_package_is_a_module_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xvit.methods.__name__ == "xvit.methods" and bool(xvit.methods)
        assert xvit.methods.Explainer is xvit.Explainer


#: Old spelling (the package as the registry) -> the same through xvit.method_registry.
OLD_USES = {
    "names": (lambda: xvit.methods.names(), lambda r: r.names()),
    "names-pattern": (lambda: xvit.methods.names("grad*"), lambda r: r.names("grad*")),
    "get": (lambda: xvit.methods.get("rollout"), lambda r: r.get("rollout")),
    "items": (lambda: dict(xvit.methods.items()), lambda r: dict(r.items())),
    "in": (lambda: "rollout" in xvit.methods, lambda r: "rollout" in r),
    "iter": (lambda: list(xvit.methods), lambda r: r.names()),
    "len": (lambda: len(xvit.methods), lambda r: len(r.names())),
    "kind": (lambda: xvit.methods.kind, lambda r: r.kind),
    "methods": (lambda: xvit.methods.methods, lambda r: r),
}


@pytest.mark.parametrize("use", sorted(OLD_USES))
def test_the_package_used_as_the_registry_warns_and_works(use: str) -> None:
    old, new = OLD_USES[use]
    with pytest.warns(DeprecationWarning, match=r"xvit\.method_registry"):
        value = old()
    assert value == new(xvit.method_registry)


def test_old_register_and_unregister_still_work() -> None:
    class Old(xvit.Explainer):
        name = "old-registry-test"

        def compute(self, adapter, inputs, target):
            gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
            return torch.zeros(len(inputs), gh, gw, device=inputs.device)

    with pytest.warns(DeprecationWarning):
        xvit.methods.register("old-registry-test", Old)
    assert xvit.get_method("old-registry-test") is Old
    with pytest.warns(DeprecationWarning):
        from xvit.methods import methods
    assert methods is xvit.method_registry
    with pytest.warns(DeprecationWarning):
        xvit.methods.unregister("old-registry-test")
    assert "old-registry-test" not in xvit.list_methods()
    with pytest.raises(AttributeError):
        _ = xvit.methods.no_such_name


# --- attribute: final and guarded --------------------------------------------------------
def _grid_ones(adapter, inputs) -> torch.Tensor:
    gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
    return torch.ones(len(inputs), gh, gw, device=inputs.device)


def test_an_old_style_attribute_override_warns_and_becomes_compute(timm_vit) -> None:
    with pytest.warns(DeprecationWarning, match="rename the method to compute") as seen:

        class OldStyle(xvit.Explainer):
            name = "old-style-test"

            def attribute(self, adapter, inputs, target):
                return _grid_ones(adapter, inputs)

    assert seen[0].filename == __file__  # the warning points at the class definition
    assert OldStyle.attribute is xvit.Explainer.attribute
    x = model_input(timm_vit)
    assert xvit.explain(OldStyle(), timm_vit, x).map.shape == (2, 4, 4)


def test_attribute_and_compute_together_are_refused() -> None:
    with pytest.raises(TypeError, match="compute only"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        class Both(xvit.Explainer):
            def attribute(self, adapter, inputs, target):
                return _grid_ones(adapter, inputs)

            def compute(self, adapter, inputs, target):
                return _grid_ones(adapter, inputs)


def test_compute_is_required() -> None:
    class Nothing(xvit.Explainer):
        name = "nothing"

    with pytest.raises(TypeError, match="compute"):
        Nothing()


class Watcher(xvit.Explainer):
    """Records the model's mode during compute and returns what it is told to."""

    name = "watcher-test"

    def __init__(self, *, result: str = "ok") -> None:
        self.result = result
        self.training: list[bool] = []

    def compute(self, adapter, inputs, target):
        self.training.append(adapter.model.training)
        if self.result == "raise":
            raise xvit.ModelOutputError("the model's forward raised RuntimeError: broken")
        maps = _grid_ones(adapter, inputs)
        if self.result == "nan":
            maps[0, 0, 0] = float("nan")
        if self.result == "flat":
            maps = maps.flatten(1)
        return maps


@pytest.mark.parametrize("as_adapter", [False, True], ids=["model", "adapter"])
def test_attribute_called_directly_is_guarded(timm_vit, as_adapter: bool) -> None:
    timm_vit.train()
    before = snapshot(timm_vit)
    model = xvit.get_adapter(timm_vit) if as_adapter else timm_vit
    explainer = Watcher()
    maps = explainer.attribute(model, model_input(timm_vit), torch.tensor([0, 1]))
    assert maps.shape == (2, 4, 4) and explainer.training == [False]  # ran in eval mode
    assert snapshot(timm_vit) == before and timm_vit.training


@pytest.mark.parametrize(
    ("inputs", "target", "message"),
    [
        ("image.png", torch.tensor([0]), "takes a preprocessed"),
        (None, torch.tensor([0.5, 1.0]), "integer class indices"),
        (None, torch.tensor([0]), r"\(2,\) tensor"),
        (None, [0, 1], "got list"),
        (None, torch.tensor([0, 99]), "out of range"),
    ],
)
def test_attribute_refuses_bad_calls(timm_vit, inputs, target, message: str) -> None:
    x = model_input(timm_vit) if inputs is None else inputs
    with pytest.raises(xvit.InvalidInputError, match=message):
        Watcher().attribute(timm_vit, x, target)


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [
        ("nan", xvit.ModelOutputError, r"^watcher-test produced NaN or infinite values"),
        ("flat", xvit.XvitError, r"^watcher-test: compute returned shape \(2, 16\)"),
        ("raise", xvit.ModelOutputError, r"^watcher-test: the model's forward raised"),
    ],
)
def test_attribute_checks_what_compute_returns(timm_vit, result, error, message) -> None:
    before = snapshot(timm_vit)
    with pytest.raises(error, match=message):
        Watcher(result=result).attribute(timm_vit, model_input(timm_vit), torch.tensor([0, 1]))
    assert snapshot(timm_vit) == before


def test_a_model_without_attention_is_refused_for_attention_methods(timm_vit) -> None:
    class NoAttention(xvit.models.TimmViTAdapter):
        def blocks(self):
            blocks = super().blocks()
            for block in blocks:
                block.attention = None
            return blocks

    adapter = NoAttention(timm_vit)
    x, target = model_input(timm_vit), torch.tensor([0, 1])
    with pytest.raises(xvit.UnsupportedModelError, match="rollout reads attention"):
        xvit.make_explainer("rollout").attribute(adapter, x, target)
    assert xvit.make_explainer("gradmask").attribute(adapter, x, target).shape == (2, 4, 4)


@pytest.mark.parametrize(
    ("capabilities", "refused", "allowed"),
    [({"attention"}, "gradmask", "rollout"), ({"qkv"}, "rollout", "gradmask")],
)
def test_methods_ask_the_adapter_for_the_capabilities_they_declare(
    timm_vit, capabilities, refused, allowed
) -> None:
    class Limited(xvit.models.TimmViTAdapter):
        pass

    Limited.capabilities = frozenset(capabilities)
    adapter = Limited(timm_vit)
    x, target = model_input(timm_vit), torch.tensor([0, 1])
    missing = ({"qkv", "attention"} - capabilities).pop()
    with pytest.raises(xvit.UnsupportedModelError, match=f"{refused} needs '{missing}'"):
        xvit.make_explainer(refused).attribute(adapter, x, target)
    assert xvit.make_explainer(allowed).attribute(adapter, x, target).shape == (2, 4, 4)


# --- declared parameters ------------------------------------------------------------------
@pytest.mark.parametrize("name", xvit.list_methods())
def test_every_parameter_of_a_builtin_is_declared(name: str) -> None:
    cls = xvit.get_method(name)
    if not cls.__module__.startswith("xvit.methods."):
        pytest.skip("a plugin")
    assert set(cls.constraints()) == set(cls.param_names())
    assert all(cls.describe_params().values())


def test_values_are_converted_by_their_constraint() -> None:
    rise = xvit.make_explainer("rise", keep_prob=1, fill=0)
    assert isinstance(rise.keep_prob, float) and isinstance(rise.fill, float)
    assert xvit.make_explainer("random", seed=None).seed is None  # the one seed rule


# --- one seed rule: the numbers stay those of the old code --------------------------------
def test_random_map_keeps_its_numbers(timm_vit) -> None:
    x = model_input(timm_vit)
    got = xvit.explain("random", timm_vit, x, seed=3).map
    for image, row in zip(x, got):
        digest = hashlib.sha256(b"3")
        digest.update(image.float().contiguous().numpy().tobytes())
        g = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little"))
        assert torch.equal(row, torch.rand(4, 4, generator=g))


def test_vitcx_noise_keeps_its_numbers() -> None:
    noise = xvit.make_explainer("vitcx", seed=9, noise_std=1.0).noise(torch.tensor([4]), (2, 3))
    state = np.random.SeedSequence(9, spawn_key=(4,)).generate_state(1, np.uint64)
    expected = torch.randn((2, 3), generator=torch.Generator().manual_seed(int(state[0])))
    assert torch.equal(noise[0], expected)


# --- one options object -------------------------------------------------------------------
def test_the_kernel_takes_options_or_the_old_keywords() -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    adapter = xvit.get_adapter(model)
    x, t = model_input(model), torch.tensor([0, 1])
    masks = (torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    old = score_masks(adapter, x, t, masks, batch_size=3)
    new = score_masks(adapter, x, t, masks, options=ForwardOptions(batch_size=3))
    assert torch.equal(old, new)
    total, _ = sum_weighted_masks(adapter, x, t, [masks], options=ForwardOptions(batch_size=2))
    torch.testing.assert_close(total, torch.einsum("bk,khw->bhw", old, masks))
    with pytest.raises(xvit.ParameterError, match="one way"):
        score_masks(adapter, x, t, masks, options=ForwardOptions(), batch_size=3)
    with pytest.raises(xvit.ParameterError, match="batch_size"):
        score_masks(adapter, x, t, masks, batch_size=0)


@pytest.mark.parametrize("name", ["gradmask", "rise", "vitcx"])
def test_mask_methods_bundle_their_forward_options(name: str) -> None:
    explainer = xvit.make_explainer(name, batch_size="auto", precision="bf16")
    assert explainer.forward_options == ForwardOptions("auto", "bf16", False)
