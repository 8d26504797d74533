"""LeGrad: the gradient of each layer's own prediction with respect to its attention map."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._constraints import Integer, OneOf, Spec
from .._errors import ParameterError, UnsupportedModelError
from .._targets import Target, gradient_scores
from ..models._base import Geometry, ModelAdapter
from ._attention import to_grid
from ._base import PASS_IMAGES, Cost, Explainer
from ._gradients import target_gradient_pass
from ._registration import register_method

#: How a block's output tokens reach the head: "mean" (every token replaced by the mean of
#: all tokens, as the authors' code pools intermediate CLIP tokens) or "model" (the model's
#: own pooling of that block's tokens, e.g. its CLS row).
POOLINGS = ("mean", "model")


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each B x h x w map scaled to [0, 1] by its own minimum and maximum; a constant map
    (no positive gradient anywhere) becomes zeros instead of 0 / 0.

    Example:
        >>> min_max(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
        tensor([[[0., 1.]],
        <BLANKLINE>
                [[0., 0.]]])
    """
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.reshape(maps.shape)


@register_method
class LeGrad(Explainer):
    """LeGrad (Bousselham, Boggust, Chaybouti, Strobelt, Kuehne, ICCV 2025).

    One forward with gradients records every block's attention probabilities A_l
    (heads x N x N) and output tokens Z_l (N x D). Each block l from ``start_layer`` to the
    last makes its own prediction: its tokens go through the model's final norm and
    classifier head (:meth:`~xvit.ModelAdapter.head_logits`), pooled as ``pooling`` says,
    and s_l is the target's logit (or the target score) of that prediction. The block's map
    is the gradient of s_l with respect to its own attention map only, ReLU'd, averaged over
    the heads and over all N query rows, on the patch columns (prefix columns dropped):
    E_l = mean_h mean_i ReLU(dA_l)[h, i, patches]. The maps of the blocks are summed and each
    image's sum is min-max scaled to [0, 1].

    Defaults follow the authors' code (WalBouss/LeGrad, ``LeWrapper``): the last two blocks
    (``layer_index=-2``), and intermediate tokens pooled by their mean over all tokens,
    prefix tokens included, before the final norm and head (their CLIP path). The authors'
    wrapper upsamples each block's map bilinearly to pixels before summing and scaling; here
    the map stays on the patch grid (xvit upsamples for display and metrics), so it is the
    authors' map before that step, min-max scaled on the grid. A constant map (no positive
    gradient) is all zeros rather than the authors' 0 / 0.

    Runs on every family that declares its final norm and head (the ``"head"`` capability:
    timm ViT/DeiT/Eva/BEiT, HuggingFace ViT/DeiT/BEiT/Data2Vec/DINOv2, torchvision ViT);
    the zero-shot CLIP classifiers (no head declared: the authors' CLIP path is not
    implemented) and attention-pooled heads (whose LeGrad differentiates the pooler's
    attention) are refused.

    Args:
        start_layer: The first block whose map is used (negative counts from the end):
            -2 (default, the authors'), 0 for every block.
        pooling: "mean" (default): every token of block l replaced by the mean of its tokens
            before the head; "model": the model's own pooling of block l's tokens (its CLS
            row for a CLS-pooled classifier).

    References:
        W. Bousselham, A. Boggust, S. Chaybouti, H. Strobelt, H. Kuehne, "LeGrad: An
        Explainability Method for Vision Transformers via Feature Formation Sensitivity",
        ICCV 2025.

    Example:
        >>> import torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> e = xvit.explain("legrad", model, torch.randn(2, 3, 64, 64), start_layer=0)
        >>> e.map.shape, float(e.map.max())
        (torch.Size([2, 8, 8]), 1.0)
    """

    name = "legrad"
    summary = "ReLU'd gradient of each block's own prediction w.r.t. its attention, summed"
    paper = "Bousselham et al., LeGrad: An Explainability Method for Vision Transformers, ICCV 2025"
    family = "attention+gradient"
    score_targets = True
    needs_gradients = True
    images_per_pass = PASS_IMAGES
    needs_attention = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "start_layer": Integer(),
        "pooling": OneOf(*POOLINGS),
    }

    def __init__(self, *, start_layer: int = -2, pooling: str = "mean") -> None:
        self.start_layer = start_layer
        self.pooling = pooling

    @classmethod
    def capabilities_needed(cls) -> tuple[str, ...]:
        return (*super().capabilities_needed(), "head")

    @classmethod
    def supports(cls, adapter: ModelAdapter) -> bool:
        return super().supports(adapter) and getattr(adapter, "pooling", None) != "attention-pool"

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        # one forward with gradients and one backward per block used: the first backward is
        # the gradient pass's own, each further one counted as about two forwards of work
        extra = len(self._layers(geometry.num_blocks)) - 1
        return Cost(forwards=2 * extra, gradient_passes=1, at_most=True)

    def _layers(self, num_blocks: int) -> range:
        start = self.start_layer
        if not -num_blocks <= start < num_blocks:
            raise ParameterError(
                f"{self.name}: start_layer={start} is out of range for a model with "
                f"{num_blocks} blocks (valid: {-num_blocks} .. {num_blocks - 1})"
            )
        return range(start % num_blocks, num_blocks)

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        if getattr(adapter, "pooling", None) == "attention-pool":
            raise UnsupportedModelError(
                f"{self.name}: this {type(adapter.model).__name__} pools its tokens by attention; "
                f"LeGrad for attention pooling differentiates the pooler's attention, which xvit "
                f"does not implement; choose gae or gradmask"
            )
        blocks = adapter.blocks()
        layers = self._layers(len(blocks))
        outputs = {}
        for i in layers:
            module = blocks[i].module
            if module is None:
                raise UnsupportedModelError(
                    f"{self.name}: {type(adapter).__name__} does not name the output of block {i}"
                )
            outputs[str(i)] = module
        prefix = adapter.geometry.num_prefix_tokens
        total = torch.zeros((), device=inputs.device)
        with target_gradient_pass(adapter, inputs, target, attention=True, layers=outputs) as (
            cap,
            _,
            _,
        ):
            attentions = cap.attentions()
            for i in layers:
                tokens = cap.layer(str(i))
                if self.pooling == "mean":
                    tokens = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
                score = gradient_scores(adapter.head_logits(tokens), target).sum()
                (grad,) = cap.grads(score, [attentions[i]], retain_graph=True)
                relevance = grad.detach().float().clamp_min(0).mean(dim=1).mean(dim=1)
                total = total + relevance[:, prefix:]
        return min_max(to_grid(total, adapter, inputs))
