"""``target=`` as a score function of the model's output (issue 14, targets beyond a class).

Gradient methods differentiate the score instead of the target logit; masked-scoring methods
weight each masked copy by its score instead of the target probability; attention-only
methods ignore it. Checked against the int-target maps and against a per-image GradMask
reference written here from ../shared/GRADMASK.md with the score in place of the softmax.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, USABLE_METHODS, model_input
from model_state import snapshot
from xvit._targets import TargetScore
from xvit.methods import score_masks

TARGET = 2


def logit_of(t: int):
    def logit(z: torch.Tensor) -> torch.Tensor:
        return z[:, t]

    return logit


def probability_of(t: int):
    def probability(z: torch.Tensor) -> torch.Tensor:
        return z.softmax(-1)[:, t]

    return probability


def probability_with_logit_gradient(t: int):
    """Value: the softmax probability of ``t``; gradient: that of the raw logit of ``t``.

    GradMask differentiates the logit but weights masks by the probability, so this one
    score must reproduce its int-target map exactly.
    """

    def score(z: torch.Tensor) -> torch.Tensor:
        logit = z[:, t]
        return z.softmax(-1)[:, t].detach() + (logit - logit.detach())

    return score


def two_logits(z: torch.Tensor) -> torch.Tensor:
    return 0.7 * z[:, 1] - 0.3 * z[:, 3]


@pytest.fixture
def model() -> nn.Module:
    return MODEL_FACTORIES["timm-vit"]()


def _methods(**flags: object) -> list[str]:
    return [
        name
        for name in USABLE_METHODS
        if all(getattr(xvit.get_method(name), k) == v for k, v in flags.items())
    ]


#: gradient methods whose map is read from the gradients alone (no masked scoring)
GRADIENT_ONLY = [n for n in _methods(needs_gradients=True) if not n.startswith("gradmask")]


@pytest.mark.parametrize("method", USABLE_METHODS)
def test_every_method_takes_a_score_function(model: nn.Module, method: str) -> None:
    cls = xvit.get_method(method)
    x = model_input(model)
    before = snapshot(model)
    e = xvit.explain(method, model, x, target=two_logits, **cls.quick_params)
    assert snapshot(model) == before
    assert torch.isfinite(e.map).all() and len(e) == 2
    assert e.targets.tolist() == [-1, -1]
    assert e.class_names == ["two_logits", "two_logits"]
    with torch.no_grad():
        assert torch.allclose(e.probabilities, two_logits(model(x)), atol=1e-6)


@pytest.mark.parametrize("method", GRADIENT_ONLY)
def test_the_target_logit_as_a_function_gives_the_int_target_map(
    model: nn.Module, method: str
) -> None:
    x = model_input(model)
    by_class = xvit.explain(method, model, x, target=TARGET).map
    by_score = xvit.explain(method, model, x, target=logit_of(TARGET)).map
    assert torch.equal(by_class, by_score)


def test_gradmask_masks_from_the_target_logit_function_are_the_int_target_masks(
    model: nn.Module,
) -> None:
    x = model_input(model)
    gm = xvit.make_explainer("gradmask")
    adapter = xvit.get_adapter(model)
    target = torch.full((2,), TARGET)
    by_class = gm.masks(adapter, x, target)
    by_score = gm.masks(adapter, x, TargetScore(logit_of(TARGET)))
    assert torch.equal(by_class, by_score)


@pytest.mark.parametrize("method", _methods(needs_gradients=False, family="attention"))
def test_attention_only_methods_ignore_the_target(model: nn.Module, method: str) -> None:
    x = model_input(model)
    by_class = xvit.explain(method, model, x, target=TARGET).map
    assert torch.equal(by_class, xvit.explain(method, model, x, target=two_logits).map)


@pytest.mark.parametrize(
    "method, score, params",
    [
        ("gradmask", probability_with_logit_gradient(TARGET), {}),
        ("rise", probability_of(TARGET), {"num_masks": 40, "seed": 3, "batch_size": 7}),
        ("vitcx", probability_of(TARGET), {"distance_threshold": 0.3, "batch_size": 7}),
    ],
)
def test_the_target_probability_as_a_function_gives_the_int_target_map(
    model: nn.Module, method: str, score, params: dict
) -> None:
    x = model_input(model)
    by_class = xvit.explain(method, model, x, target=TARGET, **params).map
    by_score = xvit.explain(method, model, x, target=score, **params).map
    torch.testing.assert_close(by_score, by_class, rtol=0, atol=1e-6)


def reference_gradmask(
    model: nn.Module, image: torch.Tensor, score, masks_per_layer: int = 4
) -> torch.Tensor:
    """GradMask of ONE image (C x H x W) from GRADMASK.md, ``score`` in place of the target
    logit (step 1) and of the softmax probability (step 7). Plain timm ViT: fused qkv."""
    blocks = list(model.blocks)
    prefix = model.num_prefix_tokens
    ph, pw = model.patch_embed.patch_size
    gh, gw = image.shape[-2] // ph, image.shape[-1] // pw
    kept: list[torch.Tensor] = []
    hooks = [b.attn.qkv.register_forward_hook(lambda m, i, o: kept.append(o)) for b in blocks]
    try:
        with torch.enable_grad():
            x = image[None].clone().requires_grad_(True)
            s = score(model(x))[0]
            grads = torch.autograd.grad(s, kept, allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    grads = [torch.zeros_like(k) if g is None else g for k, g in zip(kept, grads)]
    d = grads[0].shape[-1] // 3
    size = d // masks_per_layer
    masks = []
    for proj in range(3):  # q, then k, then v
        for blk in range(len(blocks) - 1):  # all blocks but the last
            g = grads[blk][0, :, proj * d : (proj + 1) * d]  # N x D
            for group in range(masks_per_layer):
                row = g[:, group * size : (group + 1) * size].sum(1).clamp(min=0)[prefix:]
                masks.append((row >= row.mean()).float().reshape(gh, gw))
    heat = torch.zeros(gh, gw)
    with torch.no_grad():
        for m in masks:  # each masked image scored alone, with the score function
            up = F.interpolate(m[None, None], size=image.shape[-2:], mode="nearest")[0]
            heat += score(model((image * up)[None]))[0] * m
    return heat


def test_gradmask_with_a_weighted_sum_of_logits_equals_the_reference(model: nn.Module) -> None:
    x = model_input(model, batch=3)
    before = snapshot(model)
    e = xvit.explain("gradmask", model, x, target=two_logits, batch_size=5)
    assert snapshot(model) == before
    for i in range(len(x)):
        expected = reference_gradmask(model, x[i], two_logits)
        torch.testing.assert_close(e.map[i], expected, rtol=1e-5, atol=1e-6)


def test_attribute_takes_a_score_function(model: nn.Module) -> None:
    x = model_input(model)
    gm = xvit.make_explainer("gradmask")
    direct = gm.attribute(model, x, two_logits)
    torch.testing.assert_close(direct, xvit.explain(gm, model, x, target=two_logits).map)


def test_a_lambda_is_named_custom_score(model: nn.Module) -> None:
    e = xvit.explain("gradcam", model, model_input(model), target=lambda z: z[:, 0])
    assert e.class_names == ["custom score", "custom score"]


def _returns_logits(z):
    return z


def _returns_float(z):
    return float(z[0, 0].detach())


def _returns_nan(z):
    return z[:, 0] * float("nan")


def _returns_ints(z):
    return z.argmax(-1)


def _raises(z):
    raise KeyError("no such embedding")


@pytest.mark.parametrize(
    "score, message",
    [
        (_returns_logits, r"returned shape \(\d+, 5\)"),
        (_returns_float, "returned a float"),
        (_returns_nan, "NaN or infinite"),
        (_returns_ints, "torch.int64"),
        (_raises, "raised KeyError"),
    ],
)
@pytest.mark.parametrize("method", ["gradmask", "rise", "gradcam"])
def test_bad_score_functions_are_clear_errors(
    model: nn.Module, method: str, score, message: str
) -> None:
    x = model_input(model)
    before = snapshot(model)
    params = xvit.get_method(method).quick_params
    with pytest.raises(xvit.InvalidInputError, match=message):
        xvit.explain(method, model, x, target=score, **params)
    with pytest.raises(xvit.InvalidInputError, match=message):
        xvit.make_explainer(method, **params).attribute(model, x, score)
    assert snapshot(model) == before


def test_a_score_that_is_not_differentiable_is_refused_by_gradient_methods(
    model: nn.Module,
) -> None:
    def detached(z):
        return z[:, 0].detach()

    before = snapshot(model)
    with pytest.raises(xvit.InvalidInputError, match="not differentiable"):
        xvit.explain("gradcam", model, model_input(model), target=detached)
    assert snapshot(model) == before
    # masked scoring needs no gradient
    assert torch.isfinite(
        xvit.explain("rise", model, model_input(model), target=detached).map
    ).all()


def test_nan_scores_of_masked_copies_are_blamed_on_the_score(model: nn.Module) -> None:
    adapter = xvit.get_adapter(model)
    x = model_input(model)
    with pytest.raises(xvit.InvalidInputError, match="target score _returns_nan"):
        score_masks(adapter, x, _returns_nan, torch.ones(3, 4, 4), batch_size=2)


def test_a_method_that_does_not_declare_score_targets_refuses_one(model: nn.Module) -> None:
    class ClassesOnly(xvit.Explainer):
        name = "classes-only-example"

        def compute(self, adapter, inputs, target):
            return torch.zeros(len(inputs), 4, 4) + target[:, None, None]

    before = snapshot(model)
    with pytest.raises(xvit.InvalidInputError, match="does not declare score_targets"):
        xvit.explain(ClassesOnly(), model, model_input(model), target=two_logits)
    assert snapshot(model) == before


def test_minus_one_from_a_score_explanation_is_explained_when_used_as_a_class(
    model: nn.Module,
) -> None:
    e = xvit.explain("gradcam", model, model_input(model), target=two_logits)
    with pytest.raises(xvit.InvalidInputError, match="score-function target"):
        xvit.explain("gradcam", model, model_input(model), target=e.targets)
