"""Similarity of two batches of saliency maps, map by map: Spearman rank correlation and SSIM.

Both return one float64 value per pair of maps, NaN where it is undefined (a constant map
has no ranks to correlate; two equal constant maps have no range for SSIM).

- :func:`spearman`: Pearson correlation of the pixels' ranks, tied pixels sharing the mean of
  their ranks (as ``scipy.stats.spearmanr``).
- :func:`ssim`: the structural similarity of Wang et al. (2004) on the 2-D maps, with
  scikit-image's defaults: a 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, the sample
  covariance, the data range of the two maps together, and the mean over the pixels whose
  window lies inside the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._errors import InvalidInputError

#: Side of SSIM's square window, in pixels (scikit-image's default).
SSIM_WINDOW = 7
#: SSIM's stabilising constants, as fractions of the data range (scikit-image's defaults).
SSIM_K1, SSIM_K2 = 0.01, 0.03


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """B x N float64 ranks (1-based) of each row's values; tied values share their mean rank.

    Example:
        >>> average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist()
        [[3.5, 1.0, 3.5, 2.0]]
    """
    b, n = values.shape
    ordered, order = torch.sort(values, dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(1) - 1 + torch.arange(b, device=values.device).unsqueeze(1) * n
    position = torch.arange(n, device=values.device, dtype=torch.float64).expand(b, n).flatten()
    first = torch.full((b * n,), float(n), dtype=torch.float64, device=values.device)
    last = torch.zeros(b * n, dtype=torch.float64, device=values.device)
    first.scatter_reduce_(0, group.flatten(), position, "amin")
    last.scatter_reduce_(0, group.flatten(), position, "amax")
    mean_rank = ((first + last) / 2 + 1)[group]
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman rank correlation of each pair of maps (B x ... each), over all pixels.

    Example:
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
        >>> spearman(a, torch.tensor([[10.0, 20.0, 40.0, 30.0], [1.0, 2.0, 3.0, 4.0]]))
        tensor([0.8000,    nan], dtype=torch.float64)
    """
    ra = average_ranks(a.reshape(a.shape[0], -1))
    rb = average_ranks(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    norm = ra.norm(dim=1) * rb.norm(dim=1)
    dot = (ra * rb).sum(1)
    return torch.where(norm > 0, dot / norm.clamp_min(1e-300), torch.nan).cpu()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) structural similarity of each pair of B x H x W maps (see the module docstring).

    Raises:
        InvalidInputError: A map is smaller than the 7 x 7 window.

    Example:
        >>> a = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim(a, a).tolist()
        [1.0, 1.0]
    """
    if a.dim() != 3 or a.shape[-2] < SSIM_WINDOW or a.shape[-1] < SSIM_WINDOW:
        raise InvalidInputError(
            f"SSIM compares B x H x W maps of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, "
            f"got shape {tuple(a.shape)}; compare the maps at input resolution or use "
            f"similarity='spearman'"
        )
    x = a.double().unsqueeze(1)
    y = b.double().unsqueeze(1)
    both = torch.cat([x.flatten(1), y.flatten(1)], dim=1)
    data_range = (both.amax(1) - both.amin(1)).view(-1, 1, 1, 1)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    def window_mean(t: torch.Tensor) -> torch.Tensor:
        # only windows inside the map: the pixels scikit-image keeps after its crop
        return F.avg_pool2d(t, SSIM_WINDOW, stride=1)

    pixels = SSIM_WINDOW * SSIM_WINDOW
    sample = pixels / (pixels - 1)  # sample, not population, covariance
    mx, my = window_mean(x), window_mean(y)
    vx = sample * (window_mean(x * x) - mx * mx)
    vy = sample * (window_mean(y * y) - my * my)
    vxy = sample * (window_mean(x * y) - mx * my)
    num = (2 * mx * my + c1) * (2 * vxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    values = (num / den).flatten(1).mean(1)
    return torch.where(data_range.flatten() > 0, values, torch.nan).cpu()
