"""Occlusion: a window of patches slid over the image, scored on the shared mask kernel."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._constraints import Integer, Real, Spec
from .._errors import InvalidInputError, ParameterError
from .._forward import TakesForwardOptions
from .._targets import Target
from ..models._base import Geometry, ModelAdapter
from ._base import Cost, Explainer
from ._registration import register_method
from ._scoring import fill_perturb, score_masks


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Where the windows along one side of ``size`` cells begin: every ``stride`` cells,
    ``ceil((size - window) / stride) + 1`` of them, so that the last one reaches the end (it
    is cut at the border where the stride overshoots), as Captum's ``Occlusion`` slides.

    Example:
        >>> window_starts(8, 1, 1), window_starts(8, 3, 2)
        ([0, 1, 2, 3, 4, 5, 6, 7], [0, 2, 4, 6])
    """
    count = -(-(size - window) // stride) + 1
    return [i * stride for i in range(count)]


def occlusion_windows(grid: tuple[int, int], window: int, stride: int) -> torch.Tensor:
    """K x h x w masks, 0 inside one window of ``window`` x ``window`` cells and 1 elsewhere,
    for every window position (row-major), as :func:`window_starts` places them.

    Example:
        >>> occlusion_windows((3, 3), 2, 1)[0]
        tensor([[0., 0., 1.],
                [0., 0., 1.],
                [1., 1., 1.]])
    """
    gh, gw = grid
    masks = []
    for top in window_starts(gh, window, stride):
        for left in window_starts(gw, window, stride):
            m = torch.ones(gh, gw)
            m[top : top + window, left : left + window] = 0
            masks.append(m)
    return torch.stack(masks)


@register_method
class Occlusion(TakesForwardOptions, Explainer):
    """Occlusion (Zeiler & Fergus, ECCV 2014), on the patch grid.

    A window of ``window`` x ``window`` patches slides over the patch grid in steps of
    ``stride`` patches (the last window of a row or column is cut at the border where the
    stride overshoots it, so every patch is covered). Each position gives one copy of the
    image whose pixels inside the window take ``baseline``; a patch's attribution is the
    mean, over the windows that cover it, of ``P(target | x) - P(target | x occluded)``.
    This is Captum's ``Occlusion`` with windows and strides of whole patches (its
    ``sliding_window_shapes`` = window x patch size, ``strides`` = stride x patch size, in
    pixels, over every channel), and the map is on the patch grid (B x h x w).

    The score is the target's softmax probability (as in the paper's figures of the
    probability of the correct class), like the other masked-scoring methods; pass a score
    function as the target (e.g. ``lambda z: z[:, c]``) to occlude against a logit instead.
    The baseline is 0 in the model's input space, which for normalised inputs is the
    preprocessing mean colour (the paper's grey square).

    Defaults: one patch (``window=1``) at every position (``stride=1``), one forward per
    patch plus one for the image. All copies of all images are scored in batches by the
    shared kernel.

    Args:
        window: Side of the occluding window, in patches.
        stride: Step between window positions, in patches (at most ``window``).
        baseline: Value of occluded pixels in the model's input space.
        batch_size: Occluded copies per forward, an int or "auto".
        precision: "fp32", or "bf16" for bfloat16 autocast in the forwards.
        compile: Run the forwards through ``torch.compile``.

    References:
        M. D. Zeiler, R. Fergus, "Visualizing and Understanding Convolutional Networks",
        ECCV 2014.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> xvit.explain("occlusion", m, torch.randn(1, 3, 32, 32), window=2).map.shape
        torch.Size([1, 4, 4])
    """

    name = "occlusion"
    summary = "a window of patches slid over the image: the drop of the target probability"
    paper = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"
    family = "perturbation"
    score_targets = True
    quick_params: ClassVar[dict[str, Any]] = {"window": 2, "stride": 2}
    # one forward per patch on 200 digits would take most of the demo's time alone
    demo_params: ClassVar[dict[str, Any]] = {"window": 2, "stride": 2}
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "window": Integer(low=1),
        "stride": Integer(low=1),
        "baseline": Real(),
    }

    def __init__(
        self,
        *,
        window: int = 1,
        stride: int = 1,
        baseline: float = 0.0,
        batch_size: int | str = 64,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        if stride > window:
            raise ParameterError(
                f"{self.name}: stride={stride} is larger than window={window}, which would "
                f"leave patches that no window covers; use a stride of at most {window}"
            )
        self.window = window
        self.stride = stride
        self.baseline = baseline
        self.batch_size = batch_size
        self.precision = precision
        self.compile = compile

    def windows(self, grid: tuple[int, int]) -> torch.Tensor:
        """The K x h x w occlusion masks (0 inside the window) for a patch grid."""
        if self.window > min(grid):
            raise InvalidInputError(
                f"{self.name}: a window of {self.window} patches does not fit the "
                f"{grid[0]} x {grid[1]} patch grid; use a window of at most {min(grid)}"
            )
        return occlusion_windows(grid, self.window, self.stride)

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One forward per window position and one for the image itself."""
        gh, gw = geometry.grid(*input_size)
        window = min(self.window, gh, gw)
        count = len(window_starts(gh, window, self.stride)) * len(
            window_starts(gw, window, self.stride)
        )
        return Cost(forwards=1 + count)

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        grid = adapter.geometry.grid(*inputs.shape[-2:])
        windows = self.windows(grid).to(inputs.device)
        masks = torch.cat([torch.ones(1, *grid, device=inputs.device), windows])
        probs = score_masks(
            adapter,
            inputs,
            target,
            masks,
            options=self.forward_options,
            perturb=fill_perturb(self.baseline),
        )  # B x (1 + K): the image itself, then each occluded copy
        drop = probs[:, :1] - probs[:, 1:]
        occluded = 1 - windows
        total = torch.einsum("bk,khw->bhw", drop, occluded)
        return (total / occluded.sum(dim=0)).to(inputs.dtype)
