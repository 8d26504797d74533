"""TIS: token subsets from k-means clusters of block activations, scored on the shared kernel."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._constraints import Flag, Integer, Real, Spec
from .._errors import ParameterError, UnsupportedModelError
from .._forward import TakesForwardOptions
from .._seeds import SEED, generator, resolve_seed
from .._targets import Target
from ..models._base import TOKEN_SUBSET, Geometry, ModelAdapter
from ..models._capture import Capture
from ._base import Cost, Explainer
from ._layers import tokens_to_grid
from ._registration import register_method
from ._scoring import score_binary_masks


def kmeans_centroids(
    points: torch.Tensor, init: torch.Tensor, max_iter: int = 100, tol: float = 1e-4
) -> torch.Tensor:
    """Lloyd's k-means of the rows of ``points`` (n x P), started from the rows ``init``.

    The full-batch algorithm of ``fast_pytorch_kmeans`` 0.1.6, the version the TIS authors
    pin: each point joins the centroid of highest similarity ``2 a.c - |a|^2 - |c|^2``
    (the first one on ties), each centroid moves to the mean of its points (an empty
    cluster's centroid becomes the zero vector), and the loop stops after ``max_iter``
    rounds or after the first round whose squared movement, summed over all centroids, is
    at most ``tol``.

    Example:
        >>> pts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
        >>> kmeans_centroids(pts, torch.tensor([0, 2]))
        tensor([[ 0.0000,  0.5000],
                [10.0000, 10.5000]])
    """
    centroids = points[init]
    clusters = torch.arange(len(init), device=points.device)[:, None]
    squares = (points**2).sum(dim=1)[:, None]
    for _ in range(max_iter):
        similarity = 2 * points @ centroids.T - squares - (centroids**2).sum(dim=1)[None, :]
        closest = similarity.max(dim=-1).indices
        members = (closest[None] == clusters).to(points.dtype)
        moved = members @ points / members.sum(dim=-1)[:, None]
        moved = torch.nan_to_num(moved, nan=0.0)
        error = (moved - centroids).pow(2).sum()
        centroids = moved
        if error <= tol:
            break
    return centroids


@register_method
class TIS(TakesForwardOptions, Explainer):
    """TIS (Englebert et al., ICCV 2023 workshops): Transformer Input Sampling.

    1. One forward records the output of every block (B x N x D each); their patch rows
       (prefix tokens dropped) are concatenated along the features, giving L * D feature
       vectors of P values (P = patch tokens), one value per patch token.
    2. These L * D vectors are clustered by k-means (:func:`kmeans_centroids`) into
       K = ``num_masks`` clusters, started from K distinct feature vectors drawn from
       ``seed``. Each centroid is a P-vector: its ``int(keep_ratio * P)`` largest entries
       name the patch tokens one mask keeps (``torch.topk``).
    3. Each mask is scored by running the model on the image with every prefix token and
       the kept patch tokens only (the dropped ones removed after the position embedding,
       as the authors' hook does): ``s_k = P(target | kept tokens)``.
    4. ``S = sum_k s_k m_k / sum_k m_k`` per patch token, then, with ``normalise``, scaled
       to [0, 1] as the authors do (``S - min``, then divided by its maximum). The map is on
       the patch grid (B x h x w).

    Defaults follow the authors' code (``n_masks=1024``, ``tokens_ratio=0.5``,
    ``batch_size=128``, ``normalise=True``) and its k-means (``fast_pytorch_kmeans`` 0.1.6:
    100 iterations at most, tolerance 1e-4, random distinct points as the start). Where the
    authors' code differs or fails, xvit does this, on purpose:

    - K is at most L * D: a small model (the digits ViT has 6 x 96 features) cannot form
      1024 clusters, where the authors' code raises.
    - The start points are drawn from ``seed`` with torch (the same for every image of a
      call), where the authors draw from numpy's global generator.
    - Every prefix token is kept (CLS, distillation, registers); the authors keep the first
      token only, as their models have one. A model without a CLS token works too.
    - The kept tokens enter in raster order, the authors' in the centroid's order; a ViT
      without positional information after the embedding (the models this runs on) gives
      the same output for either order, up to float rounding.
    - A patch no mask keeps gets 0, and a constant map stays 0 after normalising, where the
      authors' code divides by zero (NaN).
    - Identical masks of an image are scored once (the shared kernel's saving); the
      result is the same.

    It needs the adapter's ``"token_subset"`` capability (timm ViT/DeiT, HF ViT/DeiT,
    DINOv2, torchvision ViT, HF CLIP/SigLIP zero-shot); families whose blocks read token
    positions (rotary embeddings, relative position bias) are refused.

    With a score function as the target (see :func:`xvit.explain`), s_k is that score of
    each token subset instead of the target probability.

    Args:
        num_masks: K, the number of clusters, one mask each (at most L * D are made).
        keep_ratio: Fraction of the patch tokens each mask keeps (``tokens_ratio``).
        normalise: Scale each map to [0, 1] as the authors do.
        kmeans_iterations: Most k-means rounds.
        kmeans_tol: k-means stops when the summed squared movement is at most this.
        seed: Seed of the k-means start (default 0); None draws from torch's global
            generator.
        batch_size: Token subsets per forward, an int or "auto".
        precision: "fp32", or "bf16" for bfloat16 autocast in the subset forwards.
        compile: Run the subset forwards through ``torch.compile``.

    References:
        A. Englebert, S. Stassin, G. Nanfack, S. A. Mahmoudi, X. Siebert, O. Cornu,
        C. De Vleeschouwer, "Explaining through Transformer Input Sampling", ICCV 2023
        workshops.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> e = xvit.explain("tis", m, torch.randn(1, 3, 32, 32), num_masks=16)
        >>> e.map.shape, float(e.map.min()), float(e.map.max())
        (torch.Size([1, 4, 4]), 0.0, 1.0)
    """

    name = "tis"
    summary = "token subsets from k-means of block activations, scored with the rest dropped"
    paper = "Englebert et al., Explaining through Transformer Input Sampling, ICCV 2023 workshops"
    family = "perturbation"
    score_targets = True
    randomized = True
    quick_params: ClassVar[dict[str, Any]] = {"num_masks": 16}
    # 1024 clusters and forwards per image would take most of a minute on the demo's digits
    demo_params: ClassVar[dict[str, Any]] = {"num_masks": 32}
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "num_masks": Integer(low=1),
        "keep_ratio": Real(0, 1, low_open=True),
        "normalise": Flag(),
        "kmeans_iterations": Integer(low=1),
        "kmeans_tol": Real(low=0),
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        num_masks: int = 1024,
        keep_ratio: float = 0.5,
        normalise: bool = True,
        kmeans_iterations: int = 100,
        kmeans_tol: float = 1e-4,
        seed: int | None = 0,
        batch_size: int | str = 128,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        self.num_masks = num_masks
        self.keep_ratio = keep_ratio
        self.normalise = normalise
        self.kmeans_iterations = kmeans_iterations
        self.kmeans_tol = kmeans_tol
        self.seed = seed
        self.batch_size = batch_size
        self.precision = precision
        self.compile = compile

    @classmethod
    def capabilities_needed(cls) -> tuple[str, ...]:
        """The flags' capabilities and ``"token_subset"`` (forwards on kept tokens only)."""
        return (*super().capabilities_needed(), TOKEN_SUBSET)

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One capture forward and one forward per mask (identical masks are scored once)."""
        features = geometry.num_blocks * geometry.hidden_size
        return Cost(forwards=1 + min(self.num_masks, features), at_most=True)

    # --- steps ----------------------------------------------------------------------------
    def features(self, adapter: ModelAdapter, inputs: torch.Tensor) -> torch.Tensor:
        """Step 1: B x (L * D) x P, every block's output feature over the patch tokens."""
        modules = {}
        for i, block in enumerate(adapter.blocks()):
            if block.module is None:
                raise UnsupportedModelError(
                    f"{self.name} reads every block's output, but {type(adapter).__name__} "
                    f"does not name block {i}; choose another method"
                )
            modules[f"block{i}"] = block.module
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        with torch.inference_mode(), Capture(adapter, layers=modules) as cap:
            adapter.logits(inputs)
            outputs = [cap.layer(name).float() for name in modules]
        grids = [tokens_to_grid(t, adapter, size, self.name) for t in outputs]
        return torch.cat([g.flatten(2) for g in grids], dim=1)

    def start(self, num_features: int, seed: int | None = None) -> torch.Tensor:
        """The k-means start: min(K, L * D) distinct feature indices, drawn from ``seed``
        (default: this method's seed) on the CPU, the same for every image."""
        gen = generator(resolve_seed(self.seed if seed is None else seed))
        return torch.randperm(num_features, generator=gen)[: min(self.num_masks, num_features)]

    def token_masks(self, centroids: torch.Tensor) -> torch.Tensor:
        """Step 2: K x P binary masks, the ``int(keep_ratio * P)`` largest entries of each
        centroid."""
        patches = int(centroids.shape[-1])
        keep = int(self.keep_ratio * patches)
        if keep < 1:
            raise ParameterError(
                f"{self.name}: keep_ratio={self.keep_ratio} keeps no token of {patches} "
                f"patches; use a keep_ratio of at least {1 / patches:.3g}"
            )
        masks = torch.zeros_like(centroids)
        return masks.scatter_(1, centroids.topk(keep, dim=1).indices, 1.0)

    def saliency(self, scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Step 4: coverage-corrected weighted sum (B x K scores, B x K x P masks) -> B x P,
        normalised to [0, 1] when asked."""
        raw = torch.einsum("bk,bkp->bp", scores, masks)
        coverage = masks.sum(dim=1)
        out = torch.where(coverage > 0, raw / coverage.clamp(min=1), torch.zeros_like(raw))
        if self.normalise:
            out = out - out.min(dim=1, keepdim=True).values
            top = out.max(dim=1, keepdim=True).values
            out = torch.where(top > 0, out / torch.where(top > 0, top, 1.0), 0.0)
        return out

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        features = self.features(adapter, inputs)  # B x LD x P
        gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
        init = self.start(int(features.shape[1])).to(features.device)
        masks = torch.stack(
            [
                self.token_masks(kmeans_centroids(f, init, self.kmeans_iterations, self.kmeans_tol))
                for f in features
            ]
        )  # B x K x P
        scores = score_binary_masks(
            adapter,
            inputs,
            target,
            masks.view(*masks.shape[:2], gh, gw),
            options=self.forward_options,
            token_masks=True,
        )
        return self.saliency(scores, masks).view(-1, gh, gw).to(inputs.dtype)
