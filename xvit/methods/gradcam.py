"""Grad-CAM on a ViT's token sequence, the way pytorch-grad-cam applies it to transformers."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._constraints import Spec
from .._targets import Target
from ..models._base import ModelAdapter
from ._base import PASS_IMAGES, Explainer
from ._gradients import target_gradient_pass
from ._layers import LAYER, resolve_layer, tokens_to_grid
from ._registration import register_method


@register_method
class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) on a Vision Transformer's patch tokens.

    The target logit is backpropagated to the output of ``layer``, a B x N x D token sequence.
    Prefix tokens (CLS, distillation, registers) are dropped and the P patch tokens reshaped
    to the h x w patch grid, giving D feature maps A_d. Each channel's weight is its gradient
    averaged over the patches, ``w_d = mean_ij dy_c / dA_d[i, j]``, and the map is
    ``ReLU(sum_d w_d * A_d)``, h x w, unnormalised (as pytorch-grad-cam's ``GradCAM`` with a
    token-to-grid reshape before its min-max scaling and resizing).

    The default layer is the last block's first LayerNorm: a CLS-pooled model's last block
    sends no gradient to its patch outputs, so the block output itself would give an empty
    map, while the patch tokens entering the last attention still reach the CLS token.

    With a score function as the target (see :func:`xvit.explain`), its score is
    backpropagated instead of the target logit.

    Args:
        layer: None (default: the last block's first LayerNorm), a block index (that block's
            first LayerNorm; negative counts from the end), or any module of the model whose
            output is the B x N x D token sequence.

    References:
        R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM:
        Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> xvit.explain("gradcam", m, torch.randn(2, 3, 32, 32), layer=0).map.shape
        torch.Size([2, 4, 4])
    """

    name = "gradcam"
    summary = "gradient-weighted patch features of a block's input (last block by default)"
    paper = "Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks, ICCV 2017"
    family = "cam"
    score_targets = True
    needs_gradients = True
    images_per_pass = PASS_IMAGES
    parameter_constraints: ClassVar[dict[str, Spec]] = {"layer": LAYER}

    def __init__(self, *, layer: Any = None) -> None:
        self.layer = layer

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        module = resolve_layer(adapter, self.layer, self.name)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        layers = {"target": module}
        with target_gradient_pass(adapter, inputs, target, layers=layers) as (cap, _, score):
            tokens = cap.layer("target")
            (grad,) = cap.grads(score, [tokens])
        acts = tokens_to_grid(tokens.detach(), adapter, size, self.name).float()
        grads = tokens_to_grid(grad.detach(), adapter, size, self.name).float()
        weights = grads.mean(dim=(2, 3))  # B x D
        cam = torch.einsum("bd,bdhw->bhw", weights, acts)
        return cam.clamp_min(0).to(inputs.dtype)
