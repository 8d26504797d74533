"""Scoring many perturbed copies of a batch's images, in chunks of model inputs.

The faithfulness metrics that perturb images at random (ROAD, faithfulness correlation,
infidelity) score a fixed number of perturbed copies of each image: ``B x S`` model inputs
for a batch of ``B`` images and ``S`` copies each. They build those inputs one chunk at a
time (so that memory grows with ``batch_size``, not with ``S``) and run the model once per
chunk, as the insertion/deletion engine does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._errors import ModelOutputError
from ..models import ModelAdapter

#: Builds the model inputs of some (image, copy) pairs: (images, copies) -> N x C x H x W.
Builder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def perturbed_logits(
    adapter: ModelAdapter,
    build: Builder,
    images: int,
    copies: int,
    *,
    batch_size: int,
    metric: str,
) -> torch.Tensor:
    """B x S x classes float32 logits of the perturbed copies ``build`` makes, on the CPU.

    Args:
        adapter: The model.
        build: Returns the inputs for image indices and copy indices (two (N,) long
            tensors of equal length), on the model's device and in its dtype.
        images: B, the images of the batch.
        copies: S, the perturbed copies of each image.
        batch_size: Model inputs per forward pass.
        metric: The metric's name, for the error on non-finite logits.

    Raises:
        ModelOutputError: The model returned NaN or infinite logits on a perturbed input.
    """
    total = images * copies
    pairs = torch.arange(total)
    out = torch.empty(total, adapter.num_classes, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            flat = pairs[start : start + batch_size]
            inputs = build(flat // copies, flat % copies)
            logits = adapter.logits(inputs, check_finite=False)
            out[start : start + len(flat)] = logits.float().cpu()
    if not torch.isfinite(out).all():
        raise ModelOutputError(
            f"{metric}: the model returned NaN or infinite logits on perturbed inputs; check "
            f"the model and the input"
        )
    return out.view(images, copies, -1)


def target_values(logits: torch.Tensor, target: torch.Tensor, *, softmax: bool) -> torch.Tensor:
    """The target class's logit (or softmax probability) in float64: logits ``... x classes``
    and (B,) targets for the first dimension; the result has the shape of ``logits[..., 0]``.

    Example:
        >>> logits = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])
        >>> target_values(logits, torch.tensor([1]), softmax=False)
        tensor([[2., 1.]], dtype=torch.float64)
        >>> target_values(logits, torch.tensor([1]), softmax=True)[0, 1].item()
        0.5
    """
    values = logits.double().softmax(dim=-1) if softmax else logits.double()
    index = target.cpu().view(-1, *([1] * (values.dim() - 1))).expand(*values.shape[:-1], 1)
    return values.gather(-1, index).squeeze(-1)
