"""The adapter contract: what xvit needs to know about a Vision Transformer.

An adapter wraps one model object and exposes its geometry (read from the model, never
assumed), its preprocessing, its reported logits, and the modules whose outputs the
explanation methods capture (q/k/v projections, attention probabilities, any named layer).
The hook machinery itself lives in :mod:`xvit.models._capture` and is shared by all adapters.
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._errors import InvalidInputError, ModelOutputError, UnsupportedModelError, XvitError
from ._prenorm import PRENORM, PreNormViT
from ._preprocessing import Preprocessing

#: The capability of running the model on a subset of its patch tokens
#: (:meth:`ModelAdapter.token_entry`, :class:`~xvit.models.TokenSubset`).
TOKEN_SUBSET = "token_subset"
#: The capability of scoring patch-masked copies from the image's patch tokens
#: (:meth:`ModelAdapter.patch_embedding`, :mod:`xvit.models._patch_tokens`).
PATCH_TOKENS = "patch_tokens"


@dataclass(frozen=True)
class Geometry:
    """Shape facts of a ViT, read from the model.

    Attributes:
        num_blocks: Number of transformer blocks L.
        num_heads: Attention heads per block.
        hidden_size: Width D of the q, k and v projections.
        num_prefix_tokens: Tokens before the patch tokens (CLS, distillation, registers).
        patch_size: (height, width) of one patch in pixels.
        image_size: (height, width) the model is built for.
        in_chans: Number of input channels.
        dynamic_size: Whether the model accepts other sizes (multiples of the patch size).

    Example:
        >>> import xvit
        >>> geo = xvit.get_adapter(xvit.load_model("xvit:digits-deit")).geometry
        >>> geo.num_prefix_tokens, geo.grid(), geo.num_tokens()  # CLS + distillation, 8 x 8 patches
        (2, (8, 8), 66)
    """

    num_blocks: int
    num_heads: int
    hidden_size: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    image_size: tuple[int, int]
    in_chans: int = 3
    dynamic_size: bool = False

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Patch grid (h, w) for an input of the given size (default: the model's size)."""
        height = self.image_size[0] if height is None else height
        width = self.image_size[1] if width is None else width
        return height // self.patch_size[0], width // self.patch_size[1]

    def num_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """Sequence length N = prefix tokens + patches."""
        gh, gw = self.grid(height, width)
        return self.num_prefix_tokens + gh * gw


@dataclass
class QKVSource:
    """Where one block's q, k and v projection outputs come from.

    ``modules`` holds either one fused module whose output is [q | k | v] along the last
    dimension (timm's ``qkv``), or three modules (HF's query/key/value); their forward outputs
    are recorded with hooks.

    ``weight``, when given, names the fused projection by its weight instead: the block calls
    ``F.linear(x, weight, bias)`` itself (timm Beit and fused Eva add separate q/v biases that
    way, so the ``qkv`` module never runs; torch's ``nn.MultiheadAttention`` projects with its
    ``in_proj_weight``). :class:`~xvit.models.Capture` then records the output of every
    ``F.linear`` call with that weight tensor, for the call only; ``modules`` is then the one
    module that owns the weight.

    Example:
        >>> from torch import nn
        >>> QKVSource(modules=(nn.Linear(8, 24),), hidden_size=8).fused
        True
    """

    modules: tuple[nn.Module, ...]
    hidden_size: int
    weight: torch.Tensor | None = None

    @property
    def fused(self) -> bool:
        return len(self.modules) == 1 or self.weight is not None


@dataclass
class AttentionSource:
    """The module whose forward output carries a block's attention probabilities.

    ``extract`` turns that output into the B x heads x N x N probability tensor (or None
    when the module did not compute them, e.g. on a fused attention path).

    Example:
        >>> from torch import nn
        >>> source = AttentionSource(module=nn.Softmax(-1), extract=lambda out: out)
        >>> type(source.module).__name__
        'Softmax'
    """

    module: nn.Module
    extract: Callable[[Any], torch.Tensor | None]


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence one block sees: ``num_prefix_tokens`` tokens (CLS, distillation,
    registers) before the patch tokens in raster order, each patch token covering ``stride``
    pixels (height, width) of the input.

    Plain ViTs give every block the model's own layout; a hierarchical model (Swin) gives
    each stage its own stride, so nothing assumes one sequence shared by all blocks.

    Example:
        >>> TokenLayout(num_prefix_tokens=1, stride=(8, 8)).grid(32, 24)
        (4, 3)
    """

    num_prefix_tokens: int
    stride: tuple[int, int]

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) of this block for an input of the given size."""
        return height // self.stride[0], width // self.stride[1]


@dataclass
class BlockSources:
    """The capture points of one transformer block.

    ``attention`` is None where the block's attention probabilities cannot be had; ``tokens``
    is the block's own token layout (None: the model's, from its :class:`Geometry`);
    ``module`` is the block itself, whose (first) output is the B x N x D token sequence
    after the block (None where the adapter does not name it).

    Example:
        >>> import xvit
        >>> block = xvit.get_adapter(xvit.load_model("xvit:digits-vit")).blocks()[0]
        >>> block.qkv.fused, block.tokens
        (True, TokenLayout(num_prefix_tokens=1, stride=(8, 8)))
    """

    qkv: QKVSource
    attention: AttentionSource | None
    norm1: nn.Module
    extra: dict[str, nn.Module] = field(default_factory=dict)
    tokens: TokenLayout | None = None
    module: nn.Module | None = None


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """One re-entrant lock per model: concurrent explanations of one model take turns.

    xvit holds it for a whole explanation or metric call, while hooks are registered
    (:class:`~xvit.models.Capture`), while attention flags are switched, and around every
    forward it runs (:meth:`ModelAdapter.logits`), so two threads never see each other's
    captures or flags. Forwards the user runs in other threads are not covered.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 2)
        >>> with model_lock(model):  # re-entrant: xvit's own calls inside still proceed
        ...     model_lock(model) is model_lock(model)
        True
    """
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _MODEL_LOCKS[model] = lock
        return lock


def pair(value: Any) -> tuple[int, int]:
    """A size given as one int or as (height, width), as (height, width).

    Example:
        >>> pair(16), pair([16, 8])
        ((16, 16), (16, 8))
    """
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def inherits(model: object, package: str, names: Collection[str]) -> bool:
    """Whether ``type(model)`` is, or derives from, a class named in ``names`` that ``package``
    defines: decided from names, so the framework is never imported for the check.

    Example:
        >>> from torch import nn
        >>> inherits(nn.Linear(1, 1), "torch", ("Linear",)), inherits(nn.ReLU(), "timm", ("ReLU",))
        (True, False)
    """
    return any(
        c.__name__ in names and c.__module__.startswith(package + ".") for c in type(model).__mro__
    )


class ModelAdapter(ABC):
    """Uniform access to one ViT-family classifier.

    Subclasses implement :meth:`matches` (chosen by the model's type), the geometry,
    preprocessing, :meth:`forward_logits`, :meth:`blocks`, and how to switch the model to an
    attention implementation that materialises the probabilities. xvit's own code runs the
    model through :meth:`logits`, which turns a model that raises or returns NaN into one
    :class:`~xvit.ModelOutputError`.

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
        ...                       depth=2, img_size=32, patch_size=8)
        >>> xvit.get_adapter(m).geometry.grid()
        (4, 4)
    """

    framework: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: :func:`~xvit.get_adapter` asks adapters with a lower priority first (ties: by
    #: registered name). The built-in adapters match whole families (any subclass of timm's
    #: ``VisionTransformer``) and declare 100, so an adapter for a narrower family keeps the
    #: default and is asked before them.
    priority: ClassVar[int] = 0

    #: What the adapter can give the methods: ``"qkv"`` (q/k/v projection outputs, for
    #: gradient-on-projection methods such as GradMask), ``"attention"`` (attention
    #: probabilities, for rollout, attention maps, GAE) and ``"token_subset"`` (forwards on a
    #: subset of the patch tokens, for TIS: see :meth:`token_entry`). See :meth:`require`.
    capabilities: ClassVar[frozenset[str]] = frozenset({"qkv", "attention"})

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def require(self, *capabilities: str, method: str | None = None) -> None:
        """Raise :class:`~xvit.UnsupportedModelError` unless the adapter has every capability.

        Methods call it with what they need before touching the model, so a model that cannot
        give it is refused with the missing capability named.

        Example:
            >>> import xvit
            >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))
            >>> adapter.require("qkv", "attention", method="gae")  # nothing missing: no error
        """
        missing = [c for c in capabilities if c not in self.capabilities]
        if missing:
            who = f"{method} needs" if method else "needed:"
            have = ", ".join(sorted(self.capabilities)) or "none"
            raise UnsupportedModelError(
                f"{who} {', '.join(repr(c) for c in missing)}, which "
                f"{type(self).__name__} cannot give for a {type(self.model).__name__} "
                f"(its capabilities: {have}); choose a method that needs only those"
            )

    # --- identification -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def matches(cls, model: object) -> bool:
        """Whether this adapter handles ``model`` (checked without importing frameworks)."""

    # --- facts ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def geometry(self) -> Geometry:
        """Shape facts read from the model."""

    @property
    @abstractmethod
    def preprocessing(self) -> Preprocessing:
        """How raw images become model inputs for this model."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of output classes."""

    @abstractmethod
    def blocks(self) -> list[BlockSources]:
        """Capture points of every block, first to last."""

    def prenorm_parts(self) -> PreNormViT:
        """The model as standard pre-norm blocks (:class:`~xvit.models._prenorm.PreNormViT`),
        for adapters with the ``"prenorm"`` capability; the others raise
        :class:`~xvit.UnsupportedModelError`."""
        raise UnsupportedModelError(
            f"{type(self).__name__} does not declare the pre-norm parts of a "
            f"{type(self.model).__name__} (capability {PRENORM!r})"
        )

    def patch_embedding(self) -> nn.Module:
        """The module that turns pixels into patch tokens, each token from its own patch's
        pixels alone, after which every step up to the first block acts on each token
        separately. Adapters with the ``"patch_tokens"`` capability name it; the mask-scoring
        kernel then scores patch-masked copies from the tokens of the image and of its
        filled copy (:mod:`xvit.models._patch_tokens`; the same logits, less work).
        """
        raise UnsupportedModelError(
            f"{type(self).__name__} does not name the patch embedding of a "
            f"{type(self.model).__name__} (no 'patch_tokens' capability)"
        )

    def token_entry(self) -> nn.Module:
        """The module whose output is the token sequence the first block reads: prefix and
        patch tokens (B x N x D, patches in raster order) with their positions already added,
        where nothing after it depends on where a token sits in the image. Adapters with the
        ``"token_subset"`` capability name it; :class:`~xvit.models.TokenSubset` hooks it to
        run the model on a subset of the patch tokens.
        """
        raise UnsupportedModelError(
            f"{type(self).__name__} cannot run a {type(self.model).__name__} on a subset of "
            f"its patch tokens (no 'token_subset' capability); choose a method that does not "
            f"drop tokens"
        )

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def class_names(self) -> tuple[str, ...] | None:
        """One name per class when the model carries class names, else None.

        Adapters override this; ``xvit.explain(..., target="name")`` and :meth:`class_name`
        read it.
        """
        return None

    def class_name(self, index: int) -> str:
        """A human-readable class name when the model carries one, else the index."""
        names = self.class_names()
        return names[index] if names is not None and 0 <= index < len(names) else str(index)

    # --- running --------------------------------------------------------------------------
    @abstractmethod
    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits the model reports for a preprocessed batch (B x classes).

        For models with a distillation head this is the mean of both heads, as the models
        themselves report in eval mode.
        """

    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits the model's final norm, pooling and classifier give for a B x N x D
        token sequence taken as the last block's output (adapters with the ``"head"``
        capability; others raise :class:`~xvit.UnsupportedModelError`).

        Example:
            >>> import torch, xvit
            >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))
            >>> adapter.head_logits(torch.randn(2, 65, 96)).shape
            torch.Size([2, 10])
        """
        raise UnsupportedModelError(
            f"{type(self).__name__} does not declare the final norm and classifier of a "
            f"{type(self.model).__name__} (the 'head' capability); choose another method"
        )

    def scoring_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the masked forwards, where only the output matters (no captures).

        Equal to :meth:`forward_logits` (up to float rounding); adapters may override it with
        an exact shortcut, e.g. computing only the tokens the classifier reads in the last
        block.
        """
        return self.forward_logits(x)

    def logits(
        self,
        x: torch.Tensor,
        *,
        check_finite: bool = True,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward_logits` under the model's lock, with model faults made clear.

        An exception raised inside the model's forward becomes a
        :class:`~xvit.ModelOutputError` naming it, with the original chained as its cause.
        xvit's own errors (e.g. a :class:`~xvit.CaptureError` from a hook), out-of-memory
        errors (so callers can retry with smaller batches) and ``KeyboardInterrupt`` pass
        through unchanged.

        Args:
            x: A preprocessed B x C x H x W batch on the model's device.
            check_finite: Raise :class:`~xvit.ModelOutputError` when any logit is NaN or
                infinite. Loops that run many forwards pass False and check their results
                once at the end, which avoids a device synchronisation per forward.
            forward: Another way to compute :meth:`forward_logits` (e.g. its
                ``torch.compile`` form), run with the same lock and error handling.

        Returns:
            B x classes logits.

        Example:
            >>> import timm, torch, xvit
            >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1,
            ...                       img_size=32, patch_size=8).eval()
            >>> xvit.get_adapter(m).logits(torch.randn(2, 3, 32, 32)).shape
            torch.Size([2, 3])
        """
        with model_lock(self.model):
            try:
                out = (forward or self.forward_logits)(x)
            except (XvitError, torch.cuda.OutOfMemoryError):
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
                raise ModelOutputError(
                    f"the model's forward raised {type(exc).__name__}: {first} (on a batch of "
                    f"{_describe(x)}); the error comes from the model itself: check that "
                    f"model(x) runs on such a batch (the original error is chained below)"
                ) from exc
        if check_finite:
            check_finite_logits(out, "inputs of one forward")
        return out

    @abstractmethod
    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Switch to an attention path that materialises probabilities; restore on exit."""

    def capture_path(self, *, qkv: bool, attention: bool) -> AbstractContextManager[None]:
        """The path the model runs while :class:`~xvit.models.Capture` records: its
        :meth:`eager_attention` when attention probabilities are wanted, else the model's own.

        An adapter whose q/k/v exist only on the eager path (torch's ``nn.MultiheadAttention``
        projects inside one fused call) overrides it.
        """
        return self.eager_attention() if attention else nullcontext()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`~xvit.InvalidInputError` when the batch cannot go through the model
        (and :class:`~xvit.UnsupportedModelError` when the model has no weights to run)."""
        if self.device.type == "meta":
            raise UnsupportedModelError(
                "the model's parameters are on the meta device (shapes only, no values), so it "
                "cannot be run; materialise it first, e.g. model.to_empty(device='cpu') and "
                "load_state_dict(...), or build it with its weights"
            )
        geo = self.geometry
        if x.dim() != 4:
            raise InvalidInputError(
                f"expected a batch of images B x {geo.in_chans} x H x W, got a tensor of shape "
                f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for one image"
            )
        if x.shape[0] == 0:
            raise InvalidInputError("the batch is empty: pass at least one image")
        if x.shape[1] != geo.in_chans:
            raise InvalidInputError(
                f"the model takes {geo.in_chans}-channel images, got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); tensors must be B x C x H x W"
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        ph, pw = geo.patch_size
        if geo.dynamic_size:
            if h % ph or w % pw:
                raise InvalidInputError(
                    f"input size {h}x{w} is not a multiple of the patch size {ph}x{pw}; "
                    f"resize or pad the image to a multiple of it"
                )
        elif (h, w) != geo.image_size:
            raise InvalidInputError(
                f"the model takes {geo.image_size[0]}x{geo.image_size[1]} inputs, got {h}x{w}; "
                f"pass raw images (paths, PIL, arrays) to have xvit resize them, or resize the "
                f"tensor to {geo.image_size[0]}x{geo.image_size[1]}"
            )
        if x.is_floating_point() is False:
            raise InvalidInputError(
                f"expected a floating-point, preprocessed tensor, got dtype {x.dtype}; pass raw "
                f"images (paths, PIL, uint8 arrays) to have xvit preprocess them"
            )


def _describe(x: torch.Tensor) -> str:
    shape = " x ".join(str(int(d)) for d in x.shape)
    return f"{shape} {str(x.dtype).replace('torch.', '')} on {x.device}"


def check_finite_logits(values: torch.Tensor, what: str) -> None:
    """Raise :class:`~xvit.ModelOutputError` when a B x ... result has NaN or inf entries.

    ``what`` names the inputs whose results ``values`` holds ("inputs of one forward",
    "masked copies of the images", ...).
    """
    finite = torch.isfinite(values).reshape(values.shape[0], -1).all(dim=1)
    bad = int((~finite).sum())
    if bad:
        raise ModelOutputError(
            f"the model returned NaN or infinite values for {bad} of {values.shape[0]} {what}; "
            f"check the model's weights and the input's preprocessing (and any fill or noise "
            f"value the method puts into the image)"
        )
