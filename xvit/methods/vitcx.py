"""ViT-CX: clustered patch-embedding masks scored causally on the shared mask kernel."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .._constraints import Real, Spec
from .._forward import TakesForwardOptions
from .._progress import expect_forwards
from .._seeds import SEED, generator, index_seed, resolve_seed
from .._targets import Target
from ..models._base import Geometry, ModelAdapter
from ..models._capture import Capture
from ._base import Cost, Explainer
from ._layers import LAYER, resolve_layer, tokens_to_grid
from ._registration import register_method
from ._scoring import Perturb, score_masks


def minmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of a K x L matrix scaled to [0, 1]; a constant row becomes all zeros."""
    lo = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (x - lo) / safe, torch.zeros_like(x))


def cluster_labels(masks: torch.Tensor, threshold: float) -> np.ndarray:
    """Complete-linkage clusters of the rows of ``masks`` (K x L) under cosine distance.

    Two groups merge while the largest cosine distance between their members is strictly
    below ``threshold`` (scikit-learn's ``distance_threshold`` rule, used by the authors).
    An all-zero row has cosine similarity 0 with everything. Labels are 0 .. C-1, numbered
    by each cluster's first member.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    k = int(masks.shape[0])
    if k == 1:
        return np.zeros(1, dtype=np.int64)
    flat = masks.double()
    norms = flat.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, flat / torch.where(norms > 0, norms, 1.0), 0.0)
    dist = (1 - unit @ unit.T).cpu().numpy()
    dist = np.clip((dist + dist.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="complete")
    raw = fcluster(tree, t=np.nextafter(threshold, -np.inf), criterion="distance")
    _, first = np.unique(raw, return_index=True)
    order = {int(raw[i]): n for n, i in enumerate(sorted(first))}
    return np.array([order[int(r)] for r in raw], dtype=np.int64)


def mask_noise(seed: int, index: torch.Tensor, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Gaussian noise, std ``std``, one ``shape`` tensor per mask index (len(index) x shape).

    The noise of mask k is drawn on the CPU from a generator seeded by (seed, k) alone
    (:func:`xvit._seeds.index_seed`), so it does not depend on the batch, the chunking, or
    the device.
    """
    out = torch.empty(len(index), *shape)
    for row, k in enumerate(index.tolist()):
        out[row] = torch.randn(shape, generator=generator(index_seed(seed, k)))
    return out * std


@register_method
class ViTCX(TakesForwardOptions, Explainer):
    """ViT-CX (Xie et al., IJCAI 2023): causal explanation from clustered patch embeddings.

    1. The output of ``layer`` (by default the last block's first LayerNorm) is read for the
       image; prefix tokens are dropped and the P patch tokens reshaped to the h x w grid,
       giving D feature maps.
    2. Each map is upsampled bilinearly to the input size (H x W) and min-max scaled to
       [0, 1], a soft mask.
    3. The D masks are clustered by agglomerative clustering with complete linkage on cosine
       distance; groups merge while their distance is below ``distance_threshold`` (0.1).
       Each cluster's masks are summed and min-max scaled again: K masks M_k.
    4. Causal score with the paper's noise correction: with Gaussian noise E_k (std
       ``noise_std`` = 0.1, one draw per mask, in the model's input space) placed on the
       masked-out part,
       ``s_k = P(x * M_k + E_k * (1 - M_k)) - P(x + E_k * (1 - M_k)) + P(x)``
       (P the target-class probability), so that the noise itself is not credited.
    5. Coverage-normalised sum, as in the authors' ``causal_score``:
       ``S = (1 / K) * sum_k s_k * M_k / sum_j M_j``, pixel by pixel; where no mask covers a
       pixel (sum_j M_j = 0) the map is 0.

    The map is at input resolution (B x H x W). Constant feature maps (which the authors'
    code turns into NaN) become all-zero masks. Clustering runs per image on the CPU (scipy);
    all images' masks are then scored together by the shared kernel.

    With a score function as the target (see :func:`xvit.explain`), P above is that score of
    each (masked, noisy or clean) copy instead of the target probability.

    Args:
        layer: None (default: the last block's first LayerNorm), a block index (that block's
            first LayerNorm), or a module of the model whose output is the token sequence.
        distance_threshold: Cosine distance below which clusters merge (0 keeps all D masks).
        noise_std: Standard deviation of the Gaussian noise on the masked-out part.
        seed: Seed of the noise (default 0); None draws from torch's global generator.
        batch_size: Model inputs (masked images) per forward, an int or "auto".
        precision: "fp32", or "bf16" for bfloat16 autocast in the masked forwards.
        compile: Run the masked forwards through ``torch.compile``.

    References:
        W. Xie, X.-H. Li, C. C. Cao, N. L. Zhang, "ViT-CX: Causal Explanation of Vision
        Transformers", IJCAI 2023.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> xvit.explain("vitcx", m, torch.randn(1, 3, 32, 32)).map.shape
        torch.Size([1, 32, 32])
    """

    name = "vitcx"
    summary = "patch-embedding masks, clustered, scored causally with a noise correction"
    paper = "Xie et al., ViT-CX: Causal Explanation of Vision Transformers, IJCAI 2023"
    family = "perturbation"
    score_targets = True
    randomized = True
    quick_params: ClassVar[dict[str, Any]] = {"distance_threshold": 0.3}
    # each image holds D soft masks at input size (D x H x W floats) until they are clustered
    images_per_pass = 8
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "layer": LAYER,
        "distance_threshold": Real(0, 2),
        "noise_std": Real(low=0),
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        layer: Any = None,
        distance_threshold: float = 0.1,
        noise_std: float = 0.1,
        seed: int | None = 0,
        batch_size: int | str = 64,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        self.layer = layer
        self.distance_threshold = distance_threshold
        self.noise_std = noise_std
        self.seed = seed
        self.batch_size = batch_size
        self.precision = precision
        self.compile = compile

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """One capture forward, two masked forwards per cluster mask and one clean forward
        per image. There are at most D clusters (D = the hidden size, the width of the
        default layer), exactly D when ``distance_threshold`` is 0."""
        d = geometry.hidden_size
        return Cost(forwards=1 + 2 * d + 1, at_most=self.distance_threshold > 0)

    def feature_masks(self, adapter: ModelAdapter, inputs: torch.Tensor) -> torch.Tensor:
        """Step 1-2: B x D x H x W soft masks from the layer's patch embeddings."""
        module = resolve_layer(adapter, self.layer, self.name)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        with torch.inference_mode(), Capture(adapter, layers={"target": module}) as cap:
            adapter.logits(inputs)
            tokens = cap.layer("target")
        grid = tokens_to_grid(tokens.float(), adapter, size, self.name)  # B x D x h x w
        up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        b, d = up.shape[:2]
        return minmax_rows(up.reshape(b * d, -1)).reshape(b, d, *size)

    def cluster_masks(self, adapter: ModelAdapter, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Step 1-3: one K_b x H x W tensor of cluster masks per image."""
        out = []
        for masks in self.feature_masks(adapter, inputs):
            d = masks.shape[0]
            flat = masks.reshape(d, -1)
            labels = torch.as_tensor(cluster_labels(flat, self.distance_threshold))
            k = int(labels.max()) + 1
            sums = torch.zeros(k, flat.shape[1], dtype=flat.dtype, device=flat.device)
            sums.index_add_(0, labels.to(flat.device), flat)
            out.append(minmax_rows(sums).reshape(k, *masks.shape[1:]))
        return out

    def noise(
        self, index: torch.Tensor, shape: tuple[int, ...], seed: int | None = None
    ) -> torch.Tensor:
        """The noise E_k of masks ``index`` (len x C x H x W), the same for every image."""
        return mask_noise(
            resolve_seed(self.seed if seed is None else seed), index, shape, self.noise_std
        )

    def scores(
        self,
        adapter: ModelAdapter,
        inputs: torch.Tensor,
        target: Target,
        clusters: list[torch.Tensor],
        seed: int | None = None,
    ) -> list[torch.Tensor]:
        """Step 4: the corrected causal score s_k of every cluster mask, one (K_b,) per image."""
        seed = resolve_seed(self.seed if seed is None else seed)
        device = inputs.device
        masks = torch.cat(clusters).to(device)
        owner = torch.cat(
            [torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(clusters)]
        ).to(device)
        local = torch.cat([torch.arange(len(c)) for c in clusters])
        shape = tuple(inputs.shape[1:])

        def noisy(keep_image: bool) -> Perturb:
            def perturb(x: torch.Tensor, m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                e = self.noise(local[idx.cpu()], shape, seed).to(device=x.device, dtype=x.dtype)
                outside = e * (1 - m)
                return x + outside if keep_image else x * m + outside

            return perturb

        options = self.forward_options
        p_masked, p_noisy = [
            score_masks(
                adapter, inputs, target, masks, options=options, perturb=noisy(keep), owner=owner
            )
            for keep in (False, True)
        ]
        ones = torch.ones(1, 1, 1, device=device)
        p_clean = score_masks(adapter, inputs, target, ones, options=options)[:, 0]
        s = p_masked - p_noisy + p_clean[owner]
        return list(s.split([len(c) for c in clusters]))

    def compute(self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        clusters = self.cluster_masks(adapter, inputs)
        # now the number of masked forwards is known: two per cluster mask, one per image
        expect_forwards(2 * sum(len(c) for c in clusters) + len(inputs))
        scores = self.scores(adapter, inputs, target, clusters)
        return torch.stack([combine(m, s) for m, s in zip(clusters, scores)]).to(inputs.dtype)


def combine(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Step 5: ``(1/K) sum_k s_k M_k / sum_j M_j`` with 0 where no mask covers a pixel."""
    masks = masks.float()
    coverage = masks.sum(dim=0)
    weighted = torch.einsum("k,khw->hw", scores.to(masks), masks)
    safe = torch.where(coverage > 0, coverage, torch.ones_like(coverage))
    out = torch.where(coverage > 0, weighted / safe, torch.zeros_like(weighted))
    return out / masks.shape[0]
