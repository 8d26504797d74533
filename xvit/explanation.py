"""The result of an explanation: maps plus everything needed to interpret them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Explanation:
    """Saliency maps for a batch, with the targets and settings that produced them.

    Attributes:
        map: B x h x w maps at the method's native resolution (the patch grid for GradMask).
        method: Registry name of the method.
        targets: (B,) classes explained; -1 for every image explained by a score function
            (a callable ``target``, see :func:`xvit.explain`).
        probabilities: (B,) the model's probability of each target on the unmasked input;
            for a score function, its score of each unmasked input (not a probability).
        params: Parameter values the method ran with.
        input_size: (H, W) of the model input.
        inputs: The preprocessed B x C x H x W batch that was explained.
        images: The original images (PIL) when the inputs were files, images or arrays.
        class_names: A readable name per target when the model carries labels; for a score
            function, its ``__name__`` (or "custom score" for a lambda) for every image.

    Example:
        >>> import torch
        >>> e = Explanation(torch.ones(1, 2, 2), "x", torch.tensor([0]), torch.tensor([1.0]),
        ...                 {}, (4, 4))
        >>> e.upsample().shape
        torch.Size([1, 4, 4])
    """

    map: torch.Tensor
    method: str
    targets: torch.Tensor
    probabilities: torch.Tensor
    params: dict[str, Any]
    input_size: tuple[int, int]
    inputs: torch.Tensor | None = None
    images: list[Any] | None = None
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.map.shape[0])

    def upsample(self, size: tuple[int, int] | None = None, mode: str = "nearest") -> torch.Tensor:
        """Maps at input resolution (or ``size``), B x H x W.

        ``mode="nearest"`` keeps the patch grid (as the paper's metrics do); ``"bilinear"``
        is smoother for display.
        """
        size = size or self.input_size
        m = self.map.float().unsqueeze(1)
        if mode == "nearest":
            up = F.interpolate(m, size=size, mode="nearest")
        else:
            up = F.interpolate(m, size=size, mode=mode, align_corners=False)
        return up.squeeze(1)

    def normalized(self) -> torch.Tensor:
        """Each map min-max scaled to [0, 1] (constant maps become 0)."""
        flat = self.map.float().flatten(1)
        lo = flat.min(1, keepdim=True).values
        hi = flat.max(1, keepdim=True).values
        scaled = (flat - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
        return scaled.view_as(self.map)
