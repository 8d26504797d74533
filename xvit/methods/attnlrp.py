"""AttnLRP through the ``lxt`` package (optional extra ``xvit[lrp]``), as lxt's own ViT
example runs it: lxt's rules patched into the model's classes, zennit's Gamma rules on the
convolution and linear layers, and gradient x input at the pixels."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from .._constraints import Real, Spec
from .._errors import UnsupportedModelError
from .._targets import Target, gradient_scores
from ..models._base import Geometry, ModelAdapter
from ._base import PASS_IMAGES, Cost, Explainer
from ._registration import register_method

#: The families lxt's ViT rules reach: their blocks use torch's GELU and LayerNorm (or a
#: subclass) and an attention whose probabilities can be cut from the gradient.
FAMILIES = ("timm", "torchvision")

#: Class patches are process-wide: one AttnLRP call patches at a time.
_PATCHING = threading.Lock()

_MISSING = object()


@contextmanager
def restored_attributes(owners: list[type], names: tuple[str, ...]) -> Iterator[None]:
    """Put back each class's own ``names`` attributes (or their absence) on exit: lxt and
    its zennit patch replace methods on classes and leave them replaced."""
    saved = [
        (owner, name, owner.__dict__.get(name, _MISSING)) for owner in owners for name in names
    ]
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is _MISSING:
                if name in owner.__dict__:
                    delattr(owner, name)
            else:
                setattr(owner, name, value)


_LXT: dict[str, types.ModuleType] = {}


def lxt_efficient(name: str) -> types.ModuleType:
    """lxt's module ``lxt.efficient.<name>`` (``patches``, ``zennit_patches``).

    ``import lxt.efficient`` also imports lxt's language-model patch maps, and lxt 2.1's
    BERT map imports a transformers 4.x module, so on transformers 5 the package cannot be
    imported at all. Then the module is loaded from lxt's files without the package's
    ``__init__`` (which holds only those maps), and ``sys.modules`` is left as it was.
    """
    if name in _LXT:
        return _LXT[name]
    before = set(sys.modules)
    try:
        module = importlib.import_module(f"lxt.efficient.{name}")
    except ImportError:
        _forget_new_modules(before)  # what the failed package import left behind
        module = _load_without_package_init(name)
    _LXT[name] = module
    return module


def _load_without_package_init(name: str) -> types.ModuleType:
    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lxt is not installed: pip install xvit[lrp]")
    before = set(sys.modules)
    package = types.ModuleType("lxt.efficient")
    package.__path__ = [f"{next(iter(spec.submodule_search_locations))}/efficient"]
    sys.modules["lxt.efficient"] = package
    try:
        return importlib.import_module(f"lxt.efficient.{name}")
    finally:
        _forget_new_modules(before)


def _forget_new_modules(before: set[str]) -> None:
    for key in set(sys.modules) - before:
        if key == "lxt.efficient" or key.startswith("lxt.efficient."):
            del sys.modules[key]


def _patch_map(model: nn.Module) -> dict[type, Any]:
    """lxt's ViT patch map (``lxt.efficient.models.vit_torch.cp_LRP``) for the classes this
    model uses: the identity rule on GELU and LayerNorm, CP-LRP in torch's multi-head
    attention; subclasses with their own forward (timm's LayerNorm) are patched too."""
    lxt = lxt_efficient("patches")
    patches: dict[type, Any] = {}
    for cls in {type(m) for m in model.modules()}:
        if issubclass(cls, nn.GELU):
            patches[cls] = partial(lxt.patch_method, lxt.non_linear_forward, keep_original=True)
        elif issubclass(cls, nn.LayerNorm):
            patches[cls] = partial(lxt.patch_method, lxt.layer_norm_forward)
        elif issubclass(cls, nn.MultiheadAttention):
            patches[cls] = partial(
                lxt.patch_method, lxt.cp_multi_head_attention_forward, keep_original=True
            )
    return patches


@contextmanager
def lxt_rules(model: nn.Module) -> Iterator[None]:
    """lxt's rules in the model's classes and lxt's patch of zennit's hooks, for the block;
    every class is as it was on exit."""
    from zennit.core import BasicHook

    patches = _patch_map(model)
    owners = [*patches, BasicHook]
    with (
        _PATCHING,
        restored_attributes(owners, ("forward", "original_forward", "backward")),
    ):
        for target, patch in patches.items():  # as lxt's monkey_patch(module, patch_map)
            patch(target)
        lxt_efficient("zennit_patches").monkey_patch_zennit()
        yield


@contextmanager
def attention_cut(adapter: ModelAdapter) -> Iterator[None]:
    """No gradient through the attention probabilities (CP-LRP: lxt stops it at the queries
    and keys), for models whose attention is not torch's ``nn.MultiheadAttention`` (which
    :func:`lxt_rules` patches): the eager path, with each block's probabilities detached
    where the block uses them. Hooks are removed on exit."""
    if any(isinstance(m, nn.MultiheadAttention) for m in adapter.model.modules()):
        yield
        return
    handles = []

    def detach(_m: nn.Module, _inp: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            raise UnsupportedModelError(
                "attnlrp: the attention module returns no probability tensor to detach; "
                "lxt's rules reach only timm and torchvision ViTs"
            )
        return out.detach()

    with ExitStack() as stack:
        stack.enter_context(adapter.eager_attention())
        try:
            for i, block in enumerate(adapter.blocks()):
                if block.attention is None:
                    raise UnsupportedModelError(f"attnlrp: block {i} has no attention to cut")
                handles.append(block.attention.module.register_forward_hook(detach))
            yield
        finally:
            for handle in handles:
                handle.remove()


@register_method
class AttnLRP(Explainer):
    """AttnLRP (Achtibat et al., ICML 2024), run through the authors' ``lxt`` package.

    Follows lxt's own Vision Transformer example (``examples/vit_torch.py``,
    LRP-eXplains-Transformers): lxt's ViT patch map puts its rules into the model's classes
    for the call (the identity rule on GELU and LayerNorm, CP-LRP inside the attention: no
    relevance through the softmax), lxt patches zennit's hooks into its gradient x input
    form, and a zennit ``LayerMapComposite`` puts the Gamma rule on every ``Conv2d``
    (``conv_gamma``) and ``Linear`` (``linear_gamma``). The target logit is backpropagated to
    the input and the map is gradient x input summed over the colour channels, at pixel
    resolution (B x H x W), signed and unnormalised (the example's division by the largest
    absolute value is for plotting only).

    lxt's patch map names ``torch.nn.MultiheadAttention``, so on torchvision ViTs this is
    exactly lxt's path. On timm ViTs (their own attention and LayerNorm subclass) the same
    rules are applied to timm's classes, and CP-LRP by detaching each block's attention
    probabilities on the eager path, which stops the gradient to the queries and keys as
    lxt's patch does. Other families are refused.

    Every class patch (lxt's and zennit's) is undone after the call, and the zennit hooks
    removed, so the model and torch are exactly as before. While a call runs, the patched
    classes (GELU, LayerNorm, MultiheadAttention) compute with lxt's rules for every model
    in the process: do not run other forwards with gradients in other threads meanwhile.

    Needs the optional extra: ``pip install xvit[lrp]`` (lxt and zennit).

    Args:
        conv_gamma: Gamma of the patch embedding's convolution. lxt's example searches a grid
            (0.1, 0.25, 100) rather than fixing one; 0.25 (default) is its middle value.
        linear_gamma: Gamma of every linear layer; lxt's grid is 0, 0.01, 0.05, 0.1, 1 and
            0.05 (default) its middle value.

    References:
        R. Achtibat, S. M. V. Hatefi, M. Dreyer, A. Jain, T. Wiegand, S. Lapuschkin,
        W. Samek, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
        Transformers", ICML 2024.

    Example:
        >>> import torch, xvit
        >>> cls = xvit.get_method("attnlrp")
        >>> cls.requires, cls.extra
        (('lxt', 'zennit'), 'lrp')
    """

    name = "attnlrp"
    summary = "attention-aware LRP through lxt (Gamma rules via zennit), gradient x input"
    paper = "Achtibat et al., AttnLRP: Attention-Aware Layer-Wise Relevance Propagation, ICML 2024"
    family = "lrp"
    score_targets = True
    needs_gradients = True
    images_per_pass = PASS_IMAGES
    requires = ("lxt", "zennit")
    extra = "lrp"
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "conv_gamma": Real(low=0),
        "linear_gamma": Real(low=0),
    }

    def __init__(self, *, conv_gamma: float = 0.25, linear_gamma: float = 0.05) -> None:
        self.conv_gamma = conv_gamma
        self.linear_gamma = linear_gamma

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        # zennit's Gamma rule recomputes every Conv2d and Linear in the backward, under lxt's
        # patch with a graph kept for higher derivatives: about three gradient passes
        return Cost(gradient_passes=3)

    @classmethod
    def supports(cls, adapter: ModelAdapter) -> bool:
        family = getattr(getattr(adapter, "family", None), "name", None)
        return super().supports(adapter) and family in FAMILIES

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        if not self.supports(adapter):
            raise UnsupportedModelError(
                f"{self.name}: lxt's ViT rules reach the {' and '.join(FAMILIES)} families, not "
                f"this {type(adapter.model).__name__} ({type(adapter).__name__}); choose "
                f"another method"
            )
        import zennit.rules as z_rules
        from zennit.composites import LayerMapComposite

        composite = LayerMapComposite(
            [
                (nn.Conv2d, z_rules.Gamma(self.conv_gamma)),
                (nn.Linear, z_rules.Gamma(self.linear_gamma)),
            ]
        )
        x = inputs.detach().requires_grad_(True)
        with (
            torch.enable_grad(),
            lxt_rules(adapter.model),
            attention_cut(adapter),
            composite.context(adapter.model),
        ):
            score = gradient_scores(adapter.logits(x), target).sum()
            (grad,) = torch.autograd.grad(score, [x])
        return (x * grad).sum(dim=1).detach()
