"""Grad-CAM on a ViT's token sequence, the way pytorch-grad-cam applies it to transformers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._errors import CaptureError, ParameterError
from ..models._base import ModelAdapter
from ..models._capture import Capture
from ._base import Explainer
from ._registration import register_method


def resolve_layer(adapter: ModelAdapter, layer: Any, method: str) -> nn.Module:
    """The module whose token output a method reads.

    ``None`` is the last block's first LayerNorm (timm ``blocks[-1].norm1``, HF
    ``layernorm_before``); an int picks that block's first LayerNorm (negative counts from
    the end); a module must be part of the model.
    """
    blocks = adapter.blocks()
    if layer is None:
        return blocks[-1].norm1
    if isinstance(layer, int) and not isinstance(layer, bool):
        n = len(blocks)
        if not -n <= layer < n:
            raise ParameterError(
                f"{method}: layer={layer} is out of range for a model with {n} blocks "
                f"(valid: {-n} .. {n - 1})"
            )
        return blocks[layer].norm1
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in adapter.model.modules()):
            raise ParameterError(
                f"{method}: layer {type(layer).__name__} is not a submodule of this model; pass "
                f"one of its own modules (e.g. model.blocks[-1].norm1) or a block index"
            )
        return layer
    raise ParameterError(
        f"{method}: layer must be None (the last block's first LayerNorm), a block index, or "
        f"a module of the model, got {layer!r}"
    )


def check_layer_param(layer: Any, method: str) -> Any:
    """Early type check of a ``layer`` parameter (the range is checked against the model)."""
    if layer is None or isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, int) and not isinstance(layer, bool):
        return layer
    raise ParameterError(
        f"{method}: layer must be None (the last block's first LayerNorm), a block index, or "
        f"a module of the model, got {layer!r}"
    )


def tokens_to_grid(
    tokens: torch.Tensor, adapter: ModelAdapter, size: tuple[int, int], method: str
) -> torch.Tensor:
    """B x N x D token outputs as B x D x h x w patch feature maps (prefix tokens dropped)."""
    geo = adapter.geometry
    gh, gw = geo.grid(*size)
    prefix = geo.num_prefix_tokens
    if tokens.dim() != 3 or tokens.shape[1] != prefix + gh * gw:
        raise CaptureError(
            f"{method}: the layer's output has shape {tuple(tokens.shape)}, but a token sequence "
            f"B x {prefix + gh * gw} x D ({prefix} prefix tokens + {gh}x{gw} patches) was "
            f"expected; pick a layer inside a transformer block (e.g. its norm1)"
        )
    patches = tokens[:, prefix:, :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)


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
    needs_gradients = True

    def __init__(self, *, layer: Any = None) -> None:
        self.layer = check_layer_param(layer, self.name)

    def attribute(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        module = resolve_layer(adapter, self.layer, self.name)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad(), Capture(adapter, layers={"target": module}) as cap:
            logits = adapter.logits(x)
            tokens = cap.layer("target")
            score = logits.gather(1, target.unsqueeze(1)).sum()
            (grad,) = cap.grads(score, [tokens])
        acts = tokens_to_grid(tokens.detach(), adapter, size, self.name).float()
        grads = tokens_to_grid(grad.detach(), adapter, size, self.name).float()
        weights = grads.mean(dim=(2, 3))  # B x D
        cam = torch.einsum("bd,bdhw->bhw", weights, acts)
        return cam.clamp_min(0).to(inputs.dtype)
