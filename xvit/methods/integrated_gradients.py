"""Integrated Gradients: input gradients averaged along a straight path from a baseline,
times the input's difference from it, pooled to the patch grid."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from .._constraints import Integer, OneOf, Spec
from .._errors import ParameterError, UnsupportedModelError
from .._forward import FORWARD_CONSTRAINTS
from .._targets import Target
from ..models._base import Geometry, ModelAdapter
from ._base import Cost, Explainer
from ._pixels import POOLING, chunked_input_gradients, inputs_per_pass, pool_to_patches
from ._registration import register_method

#: The integration rules, with Captum's names.
RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")


def path_points(rule: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n positions ``alpha`` on the path (0 = baseline, 1 = input) and their weights
    (summing to 1) of an integration rule, in float64.

    Example:
        >>> alphas, weights = path_points("riemann_trapezoid", 3)
        >>> alphas.tolist(), weights.tolist()
        ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
        >>> [round(a, 4) for a in path_points("gausslegendre", 2)[0].tolist()]
        [0.2113, 0.7887]
    """
    if rule == "gausslegendre":
        nodes, gauss_weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * gauss_weights)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ParameterError(
                "integrated_gradients: the trapezoid rule needs n_steps >= 2 (both ends of the "
                "path); raise n_steps or choose another rule"
            )
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    alphas = (torch.arange(n, dtype=torch.float64) + offset) / n
    return alphas, torch.full((n,), 1.0 / n, dtype=torch.float64)


@register_method
class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan, Taly, Yan, ICML 2017), pooled to the patch grid.

    For a baseline x' the attribution of pixel channel i is
    ``(x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da``, where F is the target
    logit. The integral is approximated by a rule with ``n_steps`` points ``a_k`` and
    weights ``w_k``: ``(x - x') * sum_k w_k grad F(x' + a_k (x - x'))``; the attributions
    then sum to about ``F(x) - F(x')`` (completeness). The C x H x W attribution is pooled to
    the patch grid: summed over channels and over each patch's pixels, signed (default) or
    in absolute value.

    Defaults and why:

    - ``baseline="black"``: the paper's black image, i.e. the black image as the model sees
      it after preprocessing, ``(0 - mean) / std`` per channel. ``"zero"`` is the all-zero
      model input instead (the normalised mean colour, Captum's default baseline).
    - ``n_steps=51`` with ``rule="riemann_trapezoid"``: the authors' code (50 intervals of
      the trapezoid rule, 51 gradients from the baseline to the input); the paper suggests
      20 to 300 steps. ``n_steps`` counts gradients for every rule. The rules are Captum's:
      the left, right (the paper's sum, Eq. 3) and middle Riemann sums, and Gauss-Legendre
      (Captum's default, closer to the integral than the others for the same steps on a
      smooth path; with the digits ViT 8 points are within 8 % of the default). Captum's
      ``riemann_trapezoid`` weights sum to ``1 - 1 / n_steps``, so its attributions are
      ``(n_steps - 1) / n_steps`` of these (the authors' and the textbook rule).
    - ``pooling="signed"``: patch score = sum of the signed attributions of its pixels and
      channels, as relevance is summed in the ViT relevance benchmarks (Chefer et al. 2021;
      AttnLRP, Achtibat et al. 2024); the patch scores keep the completeness of the pixel
      attributions. ``"abs"`` sums their absolute values (evidence for and against).

    The ``n_steps`` points of all images of a batch go through the model ``batch_size`` at
    a time, so memory stays bounded for any number of steps. With a score function as the
    target (see :func:`xvit.explain`), F is that score instead of the target logit.

    Args:
        baseline: "black" (default) or "zero" (see above).
        n_steps: Points on the path, i.e. gradients per image.
        rule: Integration rule: "riemann_trapezoid" (default), "riemann_left",
            "riemann_right", "riemann_middle" or "gausslegendre".
        pooling: "signed" (default) or "abs" (see above).
        batch_size: Model inputs (points on the paths) per gradient pass, an int or "auto".

    References:
        M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks",
        ICML 2017.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> e = xvit.explain("integrated_gradients", m, torch.randn(2, 3, 32, 32), n_steps=8)
        >>> e.map.shape
        torch.Size([2, 4, 4])
    """

    name = "integrated_gradients"
    summary = "input gradients integrated from a black image to the input, summed per patch"
    paper = "Sundararajan et al., Axiomatic Attribution for Deep Networks, ICML 2017"
    family = "gradient"
    needs_gradients = True
    score_targets = True
    quick_params: ClassVar[dict[str, Any]] = {"n_steps": 4}
    # 51 gradient passes per image would take about a minute for the demo's 200 digits on two
    # cores; 8 Gauss-Legendre points take about 8 s and give maps within about 8 % (relative
    # L2 norm, on the digits) of the default's
    demo_params: ClassVar[dict[str, Any]] = {"n_steps": 8, "rule": "gausslegendre"}
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "baseline": OneOf("black", "zero"),
        "n_steps": Integer(low=1),
        "rule": OneOf(*RULES),
        "pooling": POOLING,
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
    }

    def __init__(
        self,
        *,
        baseline: str = "black",
        n_steps: int = 51,
        rule: str = "riemann_trapezoid",
        pooling: str = "signed",
        batch_size: int | str = 64,
    ) -> None:
        self.baseline = baseline
        self.n_steps = n_steps
        self.rule = rule
        self.pooling = pooling
        self.batch_size = batch_size

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One gradient pass per point on the path: ``n_steps`` per image."""
        return Cost(gradient_passes=self.n_steps)

    def baseline_input(self, adapter: ModelAdapter, inputs: torch.Tensor) -> torch.Tensor:
        """The baseline as a model input, broadcastable to ``inputs`` (B x C x H x W)."""
        if self.baseline == "zero":
            return torch.zeros((), dtype=inputs.dtype, device=inputs.device)
        prep = adapter.preprocessing
        channels = int(inputs.shape[1])
        if len(prep.mean) != channels or len(prep.std) != channels:
            raise UnsupportedModelError(
                f"integrated_gradients: the model's preprocessing has {len(prep.mean)} channel "
                f"means but its inputs have {channels} channels, so the black image is unknown; "
                f"pass baseline='zero'"
            )
        mean = torch.tensor(prep.mean, dtype=torch.float64)
        std = torch.tensor(prep.std, dtype=torch.float64)
        black = (0.0 - mean) / std
        return black.to(device=inputs.device, dtype=inputs.dtype).reshape(channels, 1, 1)

    def pixel_attributions(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target
    ) -> torch.Tensor:
        """The B x C x H x W attributions before pooling (unguarded: for inspection and tests;
        :meth:`~xvit.Explainer.attribute` runs it with the model's state kept)."""
        alphas, weights = path_points(self.rule, self.n_steps)
        alphas = alphas.to(device=inputs.device, dtype=inputs.dtype)
        weights = weights.to(device=inputs.device, dtype=inputs.dtype)
        x = inputs.detach()
        base = self.baseline_input(adapter, x).expand_as(x)
        delta = x - base

        def points(owners: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            return base[owners] + alphas[steps].reshape(-1, 1, 1, 1) * delta[owners]

        total = torch.zeros_like(x)
        chunk = inputs_per_pass(self.batch_size, adapter, x)
        passes = chunked_input_gradients(
            adapter, target, self.n_steps, len(x), chunk, x.device, points
        )
        for owners, steps, _, grads in passes:
            total.index_add_(0, owners, grads * weights[steps].reshape(-1, 1, 1, 1))
        return delta * total

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        return pool_to_patches(
            self.pixel_attributions(adapter, inputs, target), adapter, self.pooling
        )
