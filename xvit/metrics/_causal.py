"""The engine shared by Insertion and Deletion (Petsiuk et al., RISE, BMVC 2018).

Pixels are ranked by saliency (at input resolution). Curve point ``j`` of the game has
revealed (insertion) or removed (deletion) the ``counts[j]`` highest-ranked pixels; its value
is the model's softmax probability of the target class, and the score is the area under the
curve. A :class:`Protocol` fixes everything else: where the points are, how pixels of equal
saliency are ordered, what the substrates are and how the area is taken. Three are built in:

- ``"xvit"`` (default): steps of one image row, tie groups never split (see ``ties``),
  trapezoidal area over the fraction of pixels actually changed, both ends included.
- ``"rise"``: RISE's ``evaluation.py`` and ``Evaluation.ipynb``: steps of one row, numpy's
  default ``argsort`` order, RISE's ``gkern`` blur with zero padding, ``auc()`` over evenly
  spaced points.
- ``"gradmask"``: the GradMask authors' ``GradMask.py`` / ``utils.py``: 1, 5, 10, 20, ...,
  100 % of the pixels (counts truncated), numpy's default ``argsort`` order, their four
  baselines, ``sklearn.metrics.auc`` over the nominal fractions with (0, 0) prepended for
  deletion only.

Tie rules (``ties``):

- ``"groups"``: a set of pixels of equal saliency is never split. The model is run only on
  images in which every tie group is wholly changed or wholly unchanged; at a count that
  falls inside a group, the curve value is the straight line between the states without and
  with the whole group. The score then depends only on the map's values, never on where
  tied pixels sit, costs at most two forwards per point, and on a tie-free map equals any
  per-pixel order.
- ``"raster"``: tied pixels in raster order (row-major; a stable descending sort).
- ``"argsort"``: the reference codes' order: ``numpy.argsort`` (default kind) of the float32
  maps, ascending, read from the end. numpy's default sort is not stable, so the order of
  tied pixels is whatever this numpy's sort produces on this array, exactly as in the
  authors' code.

All (image, point) states of a batch are scored together, in chunks of ``batch_size``, their
masks built on the fly from the pixel ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
import torch

from .._constraints import Integer, Literal, OneOf, Real, Rule, Satisfies, Spec
from .._errors import ModelOutputError, ParameterError
from .._forward import FORWARD_CONSTRAINTS, resolve_batch_size
from .._seeds import SEED
from ..models import ModelAdapter
from ._base import UPSAMPLE, Batch, Metric, MetricResult
from ._substrates import (
    PER_POINT,
    SUBSTRATES,
    check_preprocessing,
    make_substrate,
    normal_draws,
)

#: The fractions of pixels at which the GradMask authors evaluate (``patch_perc / 100``).
GRADMASK_FRACTIONS = (0.01, 0.05, *(k / 10 for k in range(1, 11)))
TIE_RULES = ("groups", "raster", "argsort")


@dataclass(frozen=True)
class Protocol:
    """Everything an insertion/deletion protocol fixes besides the model and the data.

    Attributes:
        name: Registry name (``protocol=`` of the metrics).
        ties: Default tie rule (see the module docstring).
        blur: Default (kernel size, sigma) of the blur substrate.
        substrates: Plain substrate name -> the variant this protocol means by it.
        fractions: Default curve points as fractions of the pixels; None for steps of
            ``step`` pixels.
        truncate: Fraction -> pixel count by ``int(f * H * W)`` (True) or by rounding.
        nominal_x: Area over the nominal positions (``i / n_steps`` or the fractions
            themselves) rather than over the fraction of pixels actually changed.
        deletion_origin: Prepend the point (0, 0) to the deletion curve before the area.
        source: Where the protocol comes from (for the docs).
    """

    name: str
    ties: str
    blur: tuple[int, float]
    substrates: Mapping[str, str] = field(default_factory=dict)
    fractions: tuple[float, ...] | None = None
    truncate: bool = False
    nominal_x: bool = False
    deletion_origin: bool = False
    source: str = ""


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("xvit", ties="groups", blur=(11, 5.0), source="xvit"),
        Protocol(
            "rise",
            ties="argsort",
            blur=(11, 5.0),
            substrates={"blur": "rise_blur"},
            nominal_x=True,
            source="eclique/RISE: evaluation.py (CausalMetric, gkern, auc), Evaluation.ipynb",
        ),
        Protocol(
            "gradmask",
            ties="argsort",
            blur=(15, 7.0),
            substrates={"black": "zero", "mean": "scalar_mean", "random": "randn"},
            fractions=GRADMASK_FRACTIONS,
            truncate=True,
            nominal_x=True,
            deletion_origin=True,
            source="DavideTraini/GradMask: Implementation/GradMask.py (modify_image, "
            "get_insertion_deletion), utils.py (plot_auc_line), Usage_example.ipynb",
        ),
    )
}


def pixel_ranks(saliency: torch.Tensor, ties: str = "raster") -> torch.Tensor:
    """B x (H*W) rank of every pixel, 0 for the most salient, ties ordered by ``ties``.

    ``"raster"`` and ``"groups"`` use a stable descending sort (the groups rule only ever
    looks at whole tie groups, so any order within them serves); ``"argsort"`` reads numpy's
    default ascending ``argsort`` of the float32 maps from the end, as RISE's
    ``np.flip(np.argsort(...), -1)`` and GradMask's ``np.argsort(...)[-k:]`` do.
    """
    flat = saliency.reshape(saliency.shape[0], -1)
    n = flat.shape[1]
    if ties == "argsort":
        ascending = np.argsort(flat.detach().cpu().to(torch.float32).numpy(), axis=1)
        order = torch.from_numpy(np.ascontiguousarray(ascending[:, ::-1])).to(flat.device)
    else:
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(n, device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks


def tie_bounds(saliency: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B x S pixel counts just before and just after the tie group that ``counts`` cut.

    Where a count falls between two groups (or at 0 or all pixels) both are the count.
    """
    flat = saliency.reshape(saliency.shape[0], -1)
    b, n = flat.shape
    ascending = torch.sort(-flat, dim=1).values  # the descending values, negated
    inner = counts.clamp(0, n - 1).to(flat.device)
    values = ascending.gather(1, inner.expand(b, -1).contiguous())
    lo = torch.searchsorted(ascending, values, side="left")
    hi = torch.searchsorted(ascending, values, side="right")
    whole = counts.expand(b, -1).to(flat.device)
    between = (whole <= 0) | (whole >= n) | (lo == whole)
    return torch.where(between, whole, lo), torch.where(between, whole, hi)


def step_counts(num_pixels: int, step: int) -> torch.Tensor:
    """Pixels changed after each step: 0, step, 2 step, ..., all (the last step may be short)."""
    n_steps = math.ceil(num_pixels / step)
    return torch.tensor([min(i * step, num_pixels) for i in range(n_steps + 1)])


def fraction_counts(
    height: int, width: int, fractions: Sequence[float], *, truncate: bool = False
) -> torch.Tensor:
    """Pixels changed at each fraction: rounded, or ``int(f * H * W)`` as GradMask's code."""
    if truncate:
        return torch.tensor([int(f * height * width) for f in fractions])
    return torch.tensor([round(f * height * width) for f in fractions])


def causal_curves(
    adapter: ModelAdapter,
    x: torch.Tensor,
    target: torch.Tensor,
    saliency: torch.Tensor,
    substrate: torch.Tensor,
    counts: torch.Tensor,
    *,
    insertion: bool,
    batch_size: int,
    ties: str = "raster",
) -> torch.Tensor:
    """B x S target probabilities (float64) along the insertion or deletion game.

    Args:
        adapter: The model.
        x: B x C x H x W preprocessed images.
        target: (B,) classes.
        saliency: B x H x W maps at input resolution.
        substrate: B x C x H x W replacement values, or B x S x C x H x W with one
            substrate per curve point.
        counts: (S,) number of top-ranked pixels changed at each point.
        insertion: True: start from the substrate and reveal the image; False: start from
            the image and replace it by the substrate.
        batch_size: Model inputs (perturbed images) per forward pass.
        ties: ``"groups"``, ``"raster"`` or ``"argsort"`` (see the module docstring).
    """
    b, _c, h, w = x.shape
    n = h * w
    device = x.device
    ranks = pixel_ranks(saliency, ties).to(device)
    counts = counts.to(device)
    s = counts.numel()
    if ties == "groups":
        lo, hi = tie_bounds(saliency, counts)
        lo, hi = lo.to(device), hi.to(device)
    else:
        lo = hi = counts.expand(b, -1)
    per_point = substrate.dim() == 5
    img = torch.arange(b, device=device).view(b, 1).expand(b, s)
    point = torch.arange(s, device=device).expand(b, s) if per_point else torch.zeros_like(img)
    points = s if per_point else 1
    base = (img * points + point) * (n + 1)
    keys, inverse = torch.unique(torch.stack([base + lo, base + hi]), return_inverse=True)
    values = torch.empty(keys.numel(), dtype=torch.float32, device=device)
    with torch.inference_mode():
        for start in range(0, keys.numel(), batch_size):
            key = keys[start : start + batch_size]
            count, rest = key % (n + 1), key // (n + 1)
            im, pt = rest // points, rest % points
            changed = (ranks[im] < count.unsqueeze(1)).view(-1, 1, h, w)
            sub = substrate[im, pt] if per_point else substrate[im]
            batch = (
                torch.where(changed, x[im], sub) if insertion else torch.where(changed, sub, x[im])
            )
            probs = adapter.logits(batch, check_finite=False).float().softmax(dim=-1)
            values[start : start + len(key)] = probs.gather(1, target[im].unsqueeze(1)).squeeze(1)
    f_lo, f_hi = values.double()[inverse]
    span = (hi - lo).double()
    weight = torch.where(span > 0, (counts.double() - lo.double()) / span.clamp_min(1), 0.0)
    return f_lo + weight * (f_hi - f_lo)


def curve_areas(curves: torch.Tensor, x: torch.Tensor, *, origin: bool) -> torch.Tensor:
    """(B,) trapezoidal areas under B x S curves at positions ``x``; ``origin`` adds (0, 0)."""
    if origin:
        curves = torch.cat([torch.zeros_like(curves[:, :1]), curves], dim=1)
        x = torch.cat([torch.zeros_like(x[:1]), x])
    return torch.trapezoid(curves, x, dim=1)


def _odd_positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value % 2 == 1


def _as_fractions(value: Any) -> tuple[float, ...] | None:
    """``value`` as a tuple of floats; None when it is not a sequence of numbers."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return tuple(float(f) for f in value)
    except (TypeError, ValueError):
        return None


#: None, where the protocol decides.
PROTOCOL_DEFAULT = Literal(None, "the protocol's")


class CausalMetric(Metric):
    """Insertion or Deletion AUC; subclasses set ``insertion`` and the default substrate.

    Args:
        protocol: ``"xvit"`` (default), ``"rise"`` or ``"gradmask"``; see
            :data:`PROTOCOLS` and the module docstring. The options below left at None take
            the protocol's value.
        substrate: ``"blur"``, ``"zero"``, ``"black"``, ``"mean"`` or ``"random"``, which the
            protocol maps onto its own variant (RISE: ``"blur"`` is ``"rise_blur"``;
            GradMask: ``"black"`` is ``"zero"``, ``"mean"`` is ``"scalar_mean"``,
            ``"random"`` is ``"randn"``), or a variant named directly (see
            :mod:`xvit.metrics._substrates`); None for the metric's default.
        ties: ``"groups"``, ``"raster"`` or ``"argsort"`` (None: the protocol's).
        step: Pixels changed per step (None: one image row, the input width, as RISE).
        fractions: Explicit curve points as fractions of the pixels, strictly increasing;
            from 0 to 1 under ``"xvit"`` and ``"rise"``, in (0, 1] under ``"gradmask"``
            (overrides ``step``; the gradmask protocol sets them).
        blur_kernel: Odd Gaussian kernel size for the blur substrates (None: the protocol's).
        blur_sigma: Gaussian sigma for the blur substrates (None: the protocol's).
        upsample: How maps reach input resolution: ``"nearest"`` (default, as the
            references), ``"bilinear"`` or ``"bicubic"``.
        batch_size: Model inputs (perturbed images) per forward pass, or "auto" to size it
            from free device memory (64 on a CPU), as :class:`xvit._forward.ForwardOptions`
            means it. It never means images scored per call: every curve point of every
            image of the batch is one input, all of them scored in chunks of this size.
        seed: Seed of the random substrates (``"random"``, ``"randn"``) for calls without
            per-image ``seeds``: image ``i`` of the batch then uses ``derive_seed(seed, i)``
            (:mod:`xvit._seeds`); None draws ``seed`` from torch's global generator.
    """

    insertion: ClassVar[bool] = True
    default_substrate: ClassVar[str] = "blur"
    needs_model = True
    curve = True
    randomized = True
    parameter_constraints: ClassVar[dict[str, Spec]] = {
        "protocol": OneOf(*PROTOCOLS),
        "substrate": Rule(OneOf(*SUBSTRATES), Literal(None, "the metric's default")),
        "ties": Rule(OneOf(*TIE_RULES), PROTOCOL_DEFAULT),
        "step": Rule(Integer(low=1), Literal(None, "one image row")),
        "fractions": Rule(
            Satisfies(
                lambda v: _as_fractions(v) is not None, "a sequence of numbers", _as_fractions
            ),
            Literal(None, "steps of step pixels"),
        ),
        "blur_kernel": Rule(Satisfies(_odd_positive, "an odd positive integer"), PROTOCOL_DEFAULT),
        "blur_sigma": Rule(Real(low=0, low_open=True), PROTOCOL_DEFAULT),
        "upsample": UPSAMPLE,
        "batch_size": FORWARD_CONSTRAINTS["batch_size"],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        protocol: str = "xvit",
        substrate: str | None = None,
        ties: str | None = None,
        step: int | None = None,
        fractions: Sequence[float] | None = None,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        upsample: str = "nearest",
        batch_size: int | str = 64,
        seed: int | None = 0,
    ) -> None:
        spec = PROTOCOLS[protocol]
        if step is not None and fractions is not None:
            raise ParameterError(f"{self.name}: give step or fractions, not both")
        if step is not None and spec.fractions is not None:
            raise ParameterError(
                f"{self.name}: the {protocol} protocol evaluates at fractions of the "
                f"pixels; pass fractions=... instead of step"
            )
        self.protocol = protocol
        substrate = self.default_substrate if substrate is None else substrate
        self.substrate = spec.substrates.get(substrate, substrate)
        self.ties = spec.ties if ties is None else ties
        self.step = step
        fractions = spec.fractions if fractions is None else fractions
        self.fractions = None if fractions is None else self._check_fractions(fractions, spec)
        kernel, sigma = spec.blur
        self.blur_kernel = kernel if blur_kernel is None else blur_kernel
        self.blur_sigma = float(sigma if blur_sigma is None else blur_sigma)
        self.upsample = upsample
        self.batch_size = batch_size
        self.seed = seed

    def _check_fractions(self, fractions: Sequence[float], spec: Protocol) -> tuple[float, ...]:
        values = tuple(fractions)
        increasing = len(values) >= 2 and all(b > a for a, b in pairwise(values))
        if spec.truncate:
            if not increasing or values[0] <= 0.0 or values[-1] > 1.0:
                raise ParameterError(
                    f"{self.name}: under the {spec.name} protocol fractions must increase "
                    f"strictly within (0, 1], e.g. (0.01, 0.5, 1), got {fractions!r}"
                )
        elif not increasing or values[0] != 0.0 or values[-1] != 1.0:
            raise ParameterError(
                f"{self.name}: fractions must increase strictly from 0 to 1 with both ends "
                f"included, e.g. (0, 0.1, 0.5, 1), got {fractions!r}"
            )
        return values

    def footnote(self, input_size: tuple[int, int]) -> str:
        """The protocol behind the scores on inputs of ``input_size``: its name, substrate,
        curve points and tie rule, so that a results table says how it was made.

        Example:
            >>> from xvit.metrics import Insertion
            >>> print(Insertion(step=128).footnote((64, 64)).replace(", t", ",\\nt"))
            insertion: protocol 'xvit', blur substrate, 33 curve points (steps of 2 rows of 64 px),
            tied pixels: groups (see docs/metrics.md).
        """
        h, w = input_size
        points = int(self.counts(h, w).numel())
        if self.fractions is not None:
            spacing = "at " + ", ".join(f"{100 * f:g}" for f in self.fractions) + " % of the pixels"
        else:
            step = self.step or w
            spacing = (
                f"steps of {step // w} row{'s' if step // w > 1 else ''} of {w} px"
                if step % w == 0
                else f"steps of {step} px"
            )
        return (
            f"{self.name}: protocol {self.protocol!r}, {self.substrate} substrate, {points} "
            f"curve points ({spacing}), tied pixels: {self.ties} (see docs/metrics.md)."
        )

    def counts(self, height: int, width: int) -> torch.Tensor:
        """(S,) pixels changed at each curve point for an input of this size."""
        if self.fractions is not None:
            truncate = PROTOCOLS[self.protocol].truncate
            return fraction_counts(height, width, self.fractions, truncate=truncate)
        return step_counts(height * width, self.step or width)

    def positions(self, counts: torch.Tensor, num_pixels: int) -> torch.Tensor:
        """(S,) float64 x positions of the curve points: nominal or the fraction changed."""
        if not PROTOCOLS[self.protocol].nominal_x:
            return counts.double() / num_pixels
        if self.fractions is not None:
            return torch.tensor(self.fractions, dtype=torch.float64)
        return torch.arange(counts.numel(), dtype=torch.float64) / (counts.numel() - 1)

    def _substrate(
        self, x: torch.Tensor, prep: Any, seeds: Sequence[int], points: int
    ) -> torch.Tensor:
        if self.substrate in PER_POINT:
            draws = [torch.stack(list(normal_draws(s, tuple(x.shape[1:]), points))) for s in seeds]
            return torch.stack(draws).to(device=x.device, dtype=x.dtype)
        return make_substrate(
            self.substrate,
            x,
            prep,
            blur_kernel=self.blur_kernel,
            blur_sigma=self.blur_sigma,
            seeds=seeds,
        )

    def score(self, batch: Batch) -> MetricResult:
        """The curves of the batch and the areas under them."""
        adapter, target = batch.adapter, batch.target
        assert adapter is not None and target is not None  # needs_model
        x = batch.x
        _b, c, h, w = x.shape
        if self.substrate in ("black", "random"):
            check_preprocessing(adapter.preprocessing, c)
        counts = self.counts(h, w)
        chunk = resolve_batch_size(self.batch_size, adapter.device, c * h * w * x.element_size())
        substrate = self._substrate(x, adapter.preprocessing, batch.seeds, counts.numel())
        curves = causal_curves(
            adapter,
            x,
            target,
            batch.saliency,
            substrate,
            counts,
            insertion=self.insertion,
            batch_size=chunk,
            ties=self.ties,
        )
        if not torch.isfinite(curves).all():
            raise ModelOutputError(
                f"{self.name}: the model returned NaN or infinite logits on perturbed inputs; "
                f"check the model and the input"
            )
        curves64 = curves.double().cpu()
        x_pos = self.positions(counts, h * w)
        origin = PROTOCOLS[self.protocol].deletion_origin and not self.insertion
        scores = curve_areas(curves64, x_pos, origin=origin)
        return MetricResult(self.name, scores, curves64, x_pos)
