"""The contract every explanation method follows: a guarded :meth:`Explainer.attribute`
around the one step a method implements, :meth:`Explainer.compute`."""

from __future__ import annotations

import importlib.util
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import nn

from .._configurable import Configurable
from .._constraints import check_param
from .._errors import (
    InvalidInputError,
    MissingDependencyError,
    ModelOutputError,
    UnsupportedModelError,
    XvitError,
)
from .._forward import FORWARD_CONSTRAINTS, backing_off
from .._heap import settle_heap
from .._targets import Target, TargetScore, is_score, target_rows
from ..models import adapters, get_adapter, model_lock, preserved_state
from ..models._base import Geometry, ModelAdapter

#: Images per :meth:`Explainer.compute` call of the methods whose pass keeps every image's
#: activations (attention maps, a graph for the backward): enough to fill a CPU's cores and a
#: GPU's kernels for a ViT, few enough that memory stays flat in the number of images.
PASS_IMAGES = 32

#: A gradient pass costs about this many forwards: its forward plus a backward of about
#: twice the forward's work.
GRADIENT_PASS_FORWARDS = 3


@dataclass(frozen=True)
class Cost:
    """The passes through the model that explaining one image takes.

    Attributes:
        forwards: Forward passes without gradients (masked copies, captures).
        gradient_passes: Forward passes followed by a backward.
        at_most: True when the counts are an upper bound: the method skips work that it
            finds redundant only while it runs (identical masks, fewer clusters).

    Example:
        >>> c = Cost(forwards=24, gradient_passes=1, at_most=True)
        >>> c.describe(images=2), c.seconds(per_forward=0.5, images=2)
        ('up to 48 forwards and 2 gradient passes', 27.0)
    """

    forwards: int = 0
    gradient_passes: int = 0
    at_most: bool = False

    @property
    def passes(self) -> int:
        """Passes through the model per image, gradient passes included: what the progress
        meter of :func:`xvit.explain` expects the kernels to report."""
        return self.forwards + self.gradient_passes

    def seconds(self, per_forward: float, images: int = 1) -> float:
        """Estimated time for ``images`` images at ``per_forward`` seconds per image-forward."""
        work = self.forwards + GRADIENT_PASS_FORWARDS * self.gradient_passes
        return images * work * per_forward

    def describe(self, images: int = 1) -> str:
        """The counts for ``images`` images in words."""
        parts = []
        if self.forwards:
            parts.append(_count(images * self.forwards, "forward", "forwards"))
        if self.gradient_passes:
            n = images * self.gradient_passes
            parts.append(_count(n, "gradient pass", "gradient passes"))
        text = " and ".join(parts) or "no forward"
        return f"up to {text}" if self.at_most else text


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class Explainer(Configurable, ABC):
    """Base class of explanation methods.

    A method is configured by keyword arguments to ``__init__``: it declares what each one
    accepts in ``parameter_constraints`` (see :mod:`xvit._constraints`), checked before every
    ``__init__`` with a :class:`~xvit.ParameterError` naming the problem and the valid range,
    so the constructor only stores them. It explains a batch with :meth:`attribute`: B
    preprocessed images and B target classes in, B saliency maps out (B x h x w, at the
    method's native resolution, on the input's device). :meth:`attribute` is the same for
    every method (checks, model lock, eval mode, the model's state restored, clear errors)
    and calls the one step a method implements, :meth:`compute`. :meth:`cost` declares the
    passes through the model that one image takes, for the estimate and the progress of long
    calls.

    Class attributes declare what the method is, for listings, checks and the runner:

    Attributes:
        name: Registry name.
        summary: One line for ``xvit list``.
        paper: The paper the method implements.
        family: "gradient+mask", "attention", "attention+gradient", "cam", "perturbation",
            "lrp".
        needs_gradients: Whether it backpropagates through the model (the default
            :meth:`cost` is then one gradient pass).
        needs_attention: Whether it reads attention probabilities (:meth:`attribute` then
            refuses a model whose adapter provides none).
        needs_qkv: Whether it reads the q/k/v projections of the blocks. :meth:`attribute`
            asks the adapter for the capabilities these two flags name
            (:meth:`capabilities_needed`) and refuses a model that lacks one, naming it.
        randomized: Whether it draws random numbers (then it takes a ``seed``, see
            :mod:`xvit._seeds`).
        score_targets: Whether :meth:`compute` also takes a score function as its target
            (a :class:`~xvit._targets.TargetScore`), reading it only through
            :func:`~xvit._targets.gradient_scores` and :func:`~xvit._targets.masked_scores`
            (or the shared gradient pass and mask-scoring kernel, which do). Default False:
            :meth:`attribute` then refuses a callable target, so a method written for class
            indices never sees one. Every built-in method declares True.
        quick_params: Parameters for a cheap but valid run (used by smoke tests).
        demo_params: Parameters ``xvit demo`` runs the method with, where its defaults would
            take too long on a laptop CPU (empty: the defaults). The README says which.
        requires: Import names of optional packages the method runs on (``("lxt",)``);
            where one is missing the method is listed as unavailable, skipped by ``all`` in
            ``xvit bench``/``xvit demo``, and :meth:`attribute` raises
            :class:`~xvit.MissingDependencyError` naming the install command.
        extra: The pip extra of xvit that installs them (``"lrp"``: ``pip install xvit[lrp]``).

    Example:
        >>> import torch, xvit
        >>> class Uniform(xvit.Explainer):
        ...     name = "uniform-example"
        ...     def compute(self, adapter, inputs, target):
        ...         gh, gw = adapter.geometry.grid(*inputs.shape[-2:])
        ...         return torch.ones(len(inputs), gh, gw, device=inputs.device)
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> xvit.explain(Uniform(), model, torch.randn(2, 3, 64, 64)).map.shape
        torch.Size([2, 8, 8])
        >>> Uniform().attribute(model, torch.randn(1, 3, 64, 64), torch.tensor([3])).shape
        torch.Size([1, 8, 8])
    """

    family: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False
    needs_qkv: ClassVar[bool] = False
    score_targets: ClassVar[bool] = False
    quick_params: ClassVar[dict[str, Any]] = {}
    #: Images :meth:`compute` gets at a time (None: all of a call's images at once). Methods
    #: whose one pass keeps every image's activations for a backward declare a number, so
    #: that their memory does not grow with the number of images.
    images_per_pass: ClassVar[int | None] = None
    demo_params: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        own = cls.__dict__.get("attribute")
        if own is not None:
            if "compute" in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} defines both attribute and compute; attribute is final "
                    f"(it guards every method the same way): implement compute only"
                )
            warnings.warn(
                f"{cls.__name__} overrides Explainer.attribute, which is final: rename the "
                f"method to compute(adapter, inputs, target); attribute calls it with the "
                f"checks every method shares. It is used as compute for now.",
                DeprecationWarning,
                stacklevel=3,
            )
            cls.compute = own  # type: ignore[method-assign]
            delattr(cls, "attribute")
        super().__init_subclass__(**kwargs)

    @final
    def attribute(
        self,
        adapter: ModelAdapter | nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Saliency maps (B x h x w) for preprocessed ``inputs`` and ``target``: integer
        classes, or a score function of the model's output.

        The guarded call of every method, safe to call directly. It checks the inputs, the
        targets and the model's capabilities (``needs_attention``), then runs
        :meth:`compute` holding the model's lock, with the model in eval mode and every
        module's mode, ``requires_grad`` and ``.grad`` restored afterwards, also when it
        raises. Under ``batch_size="auto"`` a CUDA out-of-memory error halves the batch and
        runs :meth:`compute` again (see :func:`xvit._forward.backing_off`). A
        :class:`~xvit.ModelOutputError` is raised again with the method's name in
        front (the model's own error stays chained); maps with NaN or inf, or of the wrong
        shape or device, are refused. :func:`xvit.explain` adds input preparation, target
        resolution, grouping and progress around it.

        Args:
            adapter: The model's adapter, or the model itself.
            inputs: B x C x H x W preprocessed images on the model's device.
            target: (B,) integer class indices, or a callable ``score(logits) -> (B',)``
                from B' x C float32 logits to one score per row (see :func:`xvit.explain`),
                for the methods that declare ``score_targets``.

        Returns:
            B x h x w maps at the method's native resolution, on the input's device.
        """
        adapter = get_adapter(adapter) if isinstance(adapter, nn.Module) else adapter
        target = _checked_call(self, adapter, inputs, target)
        settle_heap()  # the forwards reuse freed memory instead of faulting it in (xvit._heap)
        with (
            model_lock(adapter.model),
            preserved_state(adapter.model),
            named_model_errors(self),
        ):
            # a TargetScore reaches only the methods that declare score_targets (and widen
            # compute's target to xvit._targets.Target); an "auto" batch shrinks on OOM
            maps = backing_off(
                lambda: self._compute_in_passes(adapter, inputs, target),
                adapter.device,
                getattr(self, "batch_size", None) or 1,
                self.name,
            )
        _check_maps(self, maps, inputs)
        return maps

    def _compute_in_passes(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: Target
    ) -> torch.Tensor:
        """:meth:`compute` on at most :attr:`images_per_pass` images at a time (all at once
        when it is None): a method whose pass keeps every image's activations for a backward
        then needs the same memory for 10 images or 1,000."""
        step = type(self).images_per_pass
        if step is None or len(inputs) <= step:
            return self.compute(adapter, inputs, target)  # type: ignore[arg-type]
        return torch.cat(
            [
                self.compute(adapter, part, target_rows(target, i, i + step))  # type: ignore[arg-type]
                for i, part in zip(range(0, len(inputs), step), inputs.split(step))
            ]
        )

    @abstractmethod
    def compute(
        self, adapter: ModelAdapter, inputs: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """The method's own step: saliency maps (B x h x w) for preprocessed ``inputs``
        (B x C x H x W) on the model's device and integer ``target`` (B,) on the same device.
        A method that declares ``score_targets`` may also get a
        :class:`~xvit._targets.TargetScore` and annotates ``target`` as
        :data:`~xvit._targets.Target`.

        Called by :meth:`attribute` only, with the model in eval mode and locked; it must
        return its maps on the input's device.
        """

    @classmethod
    def missing_requirements(cls) -> tuple[str, ...]:
        """The packages of ``requires`` that cannot be imported here (found without
        importing them).

        Example:
            >>> import xvit
            >>> xvit.get_method("gae").missing_requirements()
            ()
        """
        return tuple(name for name in cls.requires if importlib.util.find_spec(name) is None)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the method cannot run here, with the install command, or None when it can.

        Example:
            >>> import xvit
            >>> xvit.get_method("gradmask").unavailable_reason() is None
            True
        """
        missing = cls.missing_requirements()
        if not missing:
            return None
        install = f"pip install xvit[{cls.extra}]" if cls.extra else f"pip install {missing[0]}"
        return f"needs {', '.join(missing)} (not installed): {install}"

    @classmethod
    def capabilities_needed(cls) -> tuple[str, ...]:
        """The adapter capabilities this method needs ("qkv", "attention"), from its flags.

        Example:
            >>> import xvit
            >>> xvit.get_method("gradmask").capabilities_needed()
            ('qkv',)
        """
        flags = (("qkv", cls.needs_qkv), ("attention", cls.needs_attention))
        return tuple(name for name, needed in flags if needed)

    @classmethod
    def supports(cls, adapter: ModelAdapter) -> bool:
        """Whether the method can explain this adapter's model: it has every capability the
        method needs (:meth:`capabilities_needed`). Methods with narrower needs (a family
        list, a kind of head) override it; :meth:`attribute` refuses the others with an
        :class:`~xvit.UnsupportedModelError` that says why.

        Example:
            >>> import xvit
            >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))
            >>> xvit.get_method("gae").supports(adapter)
            True
        """
        return set(cls.capabilities_needed()) <= set(adapter.capabilities)

    def cost(self, geometry: Geometry, input_size: tuple[int, int]) -> Cost:
        """The passes through the model :meth:`attribute` makes per image, with these
        parameters on a model of this geometry and inputs of ``input_size`` (H, W).

        :func:`xvit.explain` uses it, with the time of one forward measured on the device,
        to warn before a long run and to show progress within one. The default is one pass:
        a gradient pass when the method declares ``needs_gradients``, else one forward.
        Methods that make more override it (the shared mask-scoring kernel reports the
        forwards it makes, so the progress of such methods moves within a batch).
        """
        if type(self).needs_gradients:
            return Cost(gradient_passes=1)
        return Cost(forwards=1)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _label(explainer: Explainer) -> str:
    return type(explainer).name or type(explainer).__name__


@contextmanager
def named_model_errors(explainer: Explainer) -> Iterator[None]:
    """Raise a :class:`~xvit.ModelOutputError` from the block again with the method's name in
    front, the model's own error (if any) chained directly."""
    try:
        yield
    except ModelOutputError as exc:
        raise ModelOutputError(f"{_label(explainer)}: {exc}") from exc.__cause__


def _checked_call(explainer: Explainer, adapter: ModelAdapter, inputs: Any, target: Any) -> Target:
    """Check what :meth:`Explainer.attribute` was given; the target on the input's device
    (a score function as a :class:`~xvit._targets.TargetScore`)."""
    who = _label(explainer)
    reason = type(explainer).unavailable_reason()
    if reason:
        raise MissingDependencyError(f"{who} {reason}")
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputError(
            f"{who}: attribute takes a preprocessed B x C x H x W tensor, got a "
            f"{type(inputs).__name__}; xvit.explain takes images, paths and arrays"
        )
    adapter.check_input(inputs)
    if inputs.device != adapter.device:
        raise InvalidInputError(
            f"{who}: the inputs are on {inputs.device} but the model is on {adapter.device}; "
            f"move them with inputs.to({str(adapter.device)!r}) (xvit.explain moves them itself)"
        )
    b = int(inputs.shape[0])
    if is_score(target):
        if not type(explainer).score_targets:
            raise InvalidInputError(
                f"{who} takes class indices as its target, not a score function: it does not "
                f"declare score_targets; pass integer classes (or None for the predicted class)"
            )
        _check_model(who, explainer, adapter)
        return TargetScore(target)
    if (
        not isinstance(target, torch.Tensor)
        or target.is_floating_point()
        or target.dtype == torch.bool
        or tuple(target.shape) != (b,)
    ):
        got = (
            f"shape {tuple(target.shape)} {target.dtype}"
            if isinstance(target, torch.Tensor)
            else type(target).__name__
        )
        raise InvalidInputError(
            f"{who}: target must be a ({b},) tensor of integer class indices, one per image, "
            f"or a score function of the logits, got {got}; xvit.explain also takes class "
            f"names and None (the predicted class)"
        )
    n = adapter.num_classes
    if int(target.min()) < 0 or int(target.max()) >= n:
        raise InvalidInputError(
            f"{who}: target holds {int(target.min())} .. {int(target.max())}, out of range: "
            f"the model has {n} classes (0 .. {n - 1})"
        )
    _check_model(who, explainer, adapter)
    return target.to(device=inputs.device, dtype=torch.long)


def _check_model(who: str, explainer: Explainer, adapter: ModelAdapter) -> None:
    """Refuse a model that lacks a capability the method needs, naming the adapters (model
    families) that have them all."""
    needed = type(explainer).capabilities_needed()
    try:
        adapter.require(*needed, method=who)
    except UnsupportedModelError as exc:
        able = [name for name, cls in adapters.items() if set(needed) <= cls.capabilities]
        raise UnsupportedModelError(
            f"{exc}; {who} runs on the model families {', '.join(able) or '(none)'}"
        ) from None
    if type(explainer).needs_attention:
        _check_attention(who, adapter)


def _check_attention(who: str, adapter: ModelAdapter) -> None:
    """Refuse a model whose adapter declares no attention source for some block."""
    missing = [i for i, block in enumerate(adapter.blocks()) if block.attention is None]
    if missing:
        raise UnsupportedModelError(
            f"{who} reads attention probabilities, but {type(adapter).__name__} provides none "
            f"for block(s) {missing}; choose a method that does not need attention"
        )


def _check_maps(explainer: Explainer, maps: Any, inputs: torch.Tensor) -> None:
    """Refuse maps that break the contract: not B x h x w, elsewhere than the input, or
    with NaN or infinite values."""
    who = _label(explainer)
    b = int(inputs.shape[0])
    if not (
        isinstance(maps, torch.Tensor)
        and maps.dim() == 3
        and maps.shape[0] == b
        and maps.device == inputs.device
    ):
        got = (
            f"shape {tuple(maps.shape)} on {maps.device}"
            if isinstance(maps, torch.Tensor)
            else f"a {type(maps).__name__}"
        )
        raise XvitError(
            f"{who}: compute returned {got}, but a method must return B x h x w maps "
            f"(B = {b}) on the input's device ({inputs.device}); fix its compute"
        )
    if not torch.isfinite(maps).all():
        raise ModelOutputError(
            f"{who} produced NaN or infinite values although the model's outputs "
            f"were finite; check its parameters ({explainer.params()}) and the input's scale"
        )


def check_batch_size(value: Any, method: str) -> int | str:
    """``batch_size``: a positive integer or "auto" (kept for :mod:`xvit.metrics` until it
    checks its parameters by constraint; new code declares ``FORWARD_CONSTRAINTS``)."""
    return check_param(method, "batch_size", value, FORWARD_CONSTRAINTS["batch_size"])
