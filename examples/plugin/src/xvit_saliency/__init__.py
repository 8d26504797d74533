"""xvit-saliency: an example plugin that adds one explanation method to xvit.

xvit finds :class:`Saliency` through the entry point that ``pyproject.toml`` declares::

    [project.entry-points."xvit.methods"]
    saliency = "xvit_saliency:Saliency"

Nothing else is needed: after ``pip install``, ``xvit.explain("saliency", ...)``,
``xvit list`` and ``xvit bench --methods all`` all see it.
"""

from __future__ import annotations

import torch

import xvit

__all__ = ["Saliency"]


class Saliency(xvit.Explainer):
    """Vanilla gradient saliency: how strongly each pixel moves the target logit.

    The map is the absolute gradient of the target class's logit with respect to the input
    pixels, maximised over the colour channels, as the paper does for colour images. With
    ``per_patch=True`` it is summed over each patch of the model's grid instead, giving one
    score per ViT patch like most xvit methods. Cost: one forward and one backward per image.

    Args:
        per_patch: Sum the pixel map over each patch of the model's patch grid.

    References:
        K. Simonyan, A. Vedaldi, A. Zisserman, "Deep Inside Convolutional Networks:
        Visualising Image Classification Models and Saliency Maps", ICLR Workshop 2014.

    Example:
        >>> import torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> xvit.explain("saliency", model, torch.randn(1, 3, 64, 64)).map.shape
        torch.Size([1, 64, 64])
        >>> xvit.explain("saliency", model, torch.randn(1, 3, 64, 64), per_patch=True).map.shape
        torch.Size([1, 8, 8])
    """

    name = "saliency"
    summary = "absolute input gradient of the target logit (example plugin)"
    paper = (
        "Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks: Visualising "
        "Image Classification Models and Saliency Maps, ICLR Workshop 2014"
    )
    family = "gradient"
    needs_gradients = True

    def __init__(self, *, per_patch: bool = False) -> None:
        if not isinstance(per_patch, bool):
            raise xvit.ParameterError(
                f"saliency: per_patch must be True or False, got {per_patch!r}"
            )
        self.per_patch = per_patch

    def compute(
        self, adapter: xvit.ModelAdapter, inputs: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """B x H x W pixel maps (B x h x w patch maps with ``per_patch``)."""
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = adapter.logits(x)  # xvit's forward: the model's reported logits
            score = logits.gather(1, target.unsqueeze(1)).sum()
            (grad,) = torch.autograd.grad(score, x)  # leaves the parameters' .grad alone
        saliency = grad.abs().amax(dim=1)
        if self.per_patch:
            geometry = adapter.geometry  # patch size and grid come from the model
            ph, pw = geometry.patch_size
            gh, gw = geometry.grid(*inputs.shape[-2:])
            cropped = saliency[:, : gh * ph, : gw * pw]
            saliency = cropped.reshape(-1, gh, ph, gw, pw).sum(dim=(2, 4))
        return saliency.detach()
