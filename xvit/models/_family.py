"""A model family as a declaration, and the one adapter that reads it.

A :class:`Family` says, with small functions of the model (or of one block), everything xvit
needs to know about a kind of Vision Transformer: how to recognise it, where its blocks are,
how each block produces q, k and v, where its attention probabilities appear and how the
eager attention path is entered, its prefix tokens, patch grid, head pooling, logits and
preprocessing. :class:`FamilyAdapter` turns a declaration into a :class:`ModelAdapter`; a new
family is a new declaration, not a new adapter class. The model's own forward always runs:
a declaration only names modules, flags and tensors of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._errors import UnsupportedModelError
from ._base import (
    PATCH_TOKENS,
    TOKEN_SUBSET,
    AttentionSource,
    BlockSources,
    Geometry,
    ModelAdapter,
    QKVSource,
    TokenLayout,
    model_lock,
)
from ._guard import attribute_switched
from ._prenorm import PRENORM, PreNormViT
from ._preprocessing import Preprocessing

#: How a head reads the last block's tokens: "token" (the CLS row), "prefix" (every prefix
#: row, e.g. CLS and distillation heads), "mean" (mean of the patch rows), "token+mean"
#: (HF DINOv2: CLS concatenated with the patch mean), "attention-pool" (a learned query
#: attends over the tokens, SigLIP), "other" (anything else).
POOLINGS = ("token", "prefix", "mean", "token+mean", "attention-pool", "other")
#: Poolings under which only the prefix rows of the last block reach the logits.
PREFIX_POOLINGS = ("token", "prefix")


def tensor_or_none(output: Any) -> torch.Tensor | None:
    """A module output that is itself the probability tensor (timm's ``attn_drop``)."""
    return output if isinstance(output, torch.Tensor) else None


def second_tensor(output: Any) -> torch.Tensor | None:
    """The B x heads x N x N tensor in position 1 of an ``(output, probabilities)`` pair."""
    if isinstance(output, (tuple, list)) and len(output) > 1:
        t = output[1]
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            return t
    return None


@contextmanager
def fused_attn_off(model: nn.Module, modules: Sequence[object]) -> Iterator[None]:
    """timm: ``fused_attn = False`` on each attention module for the block (restored)."""
    with attribute_switched(model, modules, "fused_attn", False):
        yield


def child(parent: Any, name: str) -> nn.Module:
    """``parent.<name>``, which must be a module (the family's structure was changed if not).

    Example:
        >>> child(nn.Sequential(nn.ReLU()), "0")
        ReLU()
    """
    module = getattr(parent, name, None)
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(
            f"this {type(parent).__name__} has no module {name!r}; its structure was modified"
        )
    return module


def legacy_transformers() -> bool:
    """Whether the transformers that is imported is a 4.x release (read from the module the
    models came from; transformers is not imported here)."""
    version = str(getattr(sys.modules.get("transformers"), "__version__", ""))
    major = version.split(".")[0]
    return major.isdigit() and int(major) < 5


@contextmanager
def hf_eager(model: nn.Module) -> Iterator[None]:
    """transformers: every config reachable from the model's modules on the eager attention
    implementation for the block, each one's own setting restored on exit.

    transformers 4.x chose each attention class when the model was built, and its SDPA
    classes fall back to the eager code (which returns the probabilities) only when the
    forward asks for attentions: there, each config's ``output_attentions`` is also on for
    the block, so the model's own forward asks. (In 5.x that would install the model's
    output-recording hooks, and the eager path returns the probabilities anyway.)
    """
    with model_lock(model):
        configs: dict[int, Any] = {}
        for module in model.modules():
            cfg = getattr(module, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                configs[id(cfg)] = cfg
        with ExitStack() as stack:
            stack.enter_context(
                attribute_switched(model, configs.values(), "_attn_implementation", "eager")
            )
            if legacy_transformers():  # after the switch: a config may check the pair
                stack.enter_context(
                    attribute_switched(model, configs.values(), "output_attentions", True)
                )
            yield


def _no_class_names(model: Any, num_classes: int) -> tuple[str, ...] | None:
    return None


def _none(model: Any, x: torch.Tensor) -> torch.Tensor | None:
    return None


@dataclass(frozen=True)
class Family:
    """A declaration of one family of ViT classifiers, read by :class:`FamilyAdapter`.

    Every field that depends on the model is a small function of it (or of one block), so
    facts are read from the model each time, never assumed.

    Attributes:
        name: Short name (``"timm-vit"``), also the adapter's registered name.
        description: What it supports, listed in :class:`~xvit.UnsupportedModelError`.
        matches: Whether a model belongs to the family (decide by type, without importing
            the framework: :func:`~xvit.models.inherits`).
        blocks: The model's transformer blocks, first to last.
        qkv: A block's :class:`QKVSource`: three modules (separate Linears), one fused module
            whose output is [q | k | v], or a fused weight that the block passes to
            ``F.linear`` itself (separate q/v biases, ``nn.MultiheadAttention.in_proj``).
        attention: A block's :class:`AttentionSource` (the module whose output carries the
            probabilities on the eager path), or None where none can be had.
        norm1: A block's first norm (its output is the B x N x D token sequence).
        num_heads: Attention heads per block.
        prefix_tokens: Tokens before the patches (CLS, distillation, registers).
        patch_size: (height, width) of a patch.
        image_size: (height, width) the model is built for.
        dynamic_size: Whether other input sizes (multiples of the patch) work.
        in_chans: Input channels.
        pooling: How the head reads the last block (one of :data:`POOLINGS`).
        eager: A context manager for the model's eager attention path, where the attention
            probabilities exist as tensors (restores the model's setting on exit).
        qkv_on_eager_path: Whether q/k/v also exist only on the eager path.
        logits: The logits the model reports for a preprocessed batch.
        num_classes: Number of classes.
        preprocessing: How raw images become inputs.
        class_names: ``(model, num_classes) -> names or None``.
        prefix_rows_logits: An exact shortcut for the masked forwards where the head reads
            only the prefix rows (``None`` result: not applicable, the plain forward runs);
            used only when ``pooling`` is one of :data:`PREFIX_POOLINGS`.
        check: Raises :class:`~xvit.UnsupportedModelError` when a model of the family was
            modified so that it no longer has the declared structure.
        capabilities: What the adapter gives the methods (``"qkv"``, ``"attention"``).
        prenorm: The model as standard pre-norm blocks (raises
            :class:`~xvit.UnsupportedModelError` for a model whose modules do not fit), or
            None where the family's blocks have another shape. Declaring it adds the
            ``"prenorm"`` capability.
        head: ``(model, tokens) -> logits``: the model's final norm, pooling and classifier
            applied to a B x N x D token sequence taken as the last block's output (for
            methods that read every block through the head, LeGrad); None where the family
            does not declare it. A family with a head also has the ``"head"`` capability.
        token_entry: The module whose output is the token sequence the first block reads
            (prefix and patch tokens, positions added), where no later module needs a
            token's position (no relative position bias, no rotary embedding); None where
            that does not hold. Declaring it adds the ``"token_subset"`` capability.
        patch_embed: The module that turns pixels into patch tokens, each from its own
            patch's pixels alone (a convolution with stride = kernel = patch, maybe a
            per-token norm), after which every step up to the first block acts on each token
            separately (prefix tokens, positions, per-token norms, eval-mode dropout); None
            where that does not hold. Its output is B x P x D, B x h x w x D or B x D x h x w.
            Declaring it adds the ``"patch_tokens"`` capability: patch-masked copies are then
            scored from the image's patch tokens (:mod:`xvit.models._patch_tokens`).

    Example:
        >>> import xvit
        >>> family = xvit.models.TimmViTAdapter.family
        >>> family.name, sorted(family.capabilities)
        ('timm', ['attention', 'qkv'])
    """

    name: str
    description: str
    matches: Callable[[object], bool]
    blocks: Callable[[Any], Sequence[nn.Module]]
    qkv: Callable[[Any], QKVSource]
    attention: Callable[[Any], AttentionSource | None]
    norm1: Callable[[Any], nn.Module]
    num_heads: Callable[[Any], int]
    prefix_tokens: Callable[[Any], int]
    patch_size: Callable[[Any], tuple[int, int]]
    image_size: Callable[[Any], tuple[int, int]]
    pooling: Callable[[Any], str]
    eager: Callable[[Any], AbstractContextManager[None]]
    logits: Callable[[Any, torch.Tensor], torch.Tensor]
    num_classes: Callable[[Any], int]
    preprocessing: Callable[[Any], Preprocessing]
    dynamic_size: Callable[[Any], bool] = lambda model: False
    in_chans: Callable[[Any], int] = lambda model: 3
    qkv_on_eager_path: bool = False
    class_names: Callable[[Any, int], tuple[str, ...] | None] = _no_class_names
    prefix_rows_logits: Callable[[Any, torch.Tensor], torch.Tensor | None] = _none
    check: Callable[[Any], None] = lambda model: None
    capabilities: frozenset[str] = field(default=frozenset({"qkv", "attention"}))
    prenorm: Callable[[Any], PreNormViT] | None = None
    head: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    token_entry: Callable[[Any], nn.Module] | None = None
    patch_embed: Callable[[Any], nn.Module] | None = None


class FamilyAdapter(ModelAdapter):
    """The adapter of a declared :class:`Family`: the public base for new families.

    A subclass sets ``family`` (and may override any member, e.g. ``preprocessing``);
    ``framework``, ``description`` and ``capabilities`` come from the declaration (with
    ``"token_subset"`` where it declares a ``token_entry``).

    Example:
        >>> import timm, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2,
        ...                       img_size=32, patch_size=8)
        >>> adapter = xvit.get_adapter(m)
        >>> isinstance(adapter, xvit.FamilyAdapter), adapter.family.name, adapter.pooling
        (True, 'timm', 'token')
    """

    family: ClassVar[Family]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family = cls.__dict__.get("family")
        if family is not None:
            if "framework" not in cls.__dict__:
                cls.framework = family.name
            if "description" not in cls.__dict__:
                cls.description = family.description
            if "capabilities" not in cls.__dict__:
                declared = frozenset({PRENORM}) if family.prenorm is not None else frozenset()
                head = frozenset({"head"}) if family.head is not None else frozenset()
                tokens = {TOKEN_SUBSET} if family.token_entry is not None else set()
                patches = {PATCH_TOKENS} if family.patch_embed is not None else set()
                cls.capabilities = family.capabilities | declared | head | tokens | patches

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        blocks = self.family.blocks(model)
        if not blocks:
            raise UnsupportedModelError(
                f"this {type(model).__name__} has no transformer blocks to explain"
            )
        self.family.check(model)

    @classmethod
    def matches(cls, model: object) -> bool:
        return cls.family.matches(model)

    # --- facts ----------------------------------------------------------------------------
    @property
    def pooling(self) -> str:
        """How the head reads the last block's tokens (one of :data:`POOLINGS`)."""
        return self.family.pooling(self.model)

    @property
    def geometry(self) -> Geometry:
        f, m = self.family, self.model
        return Geometry(
            num_blocks=len(f.blocks(m)),
            num_heads=int(f.num_heads(m)),
            hidden_size=int(f.qkv(f.blocks(m)[0]).hidden_size),
            num_prefix_tokens=int(f.prefix_tokens(m)),
            patch_size=f.patch_size(m),
            image_size=f.image_size(m),
            in_chans=int(f.in_chans(m)),
            dynamic_size=bool(f.dynamic_size(m)),
        )

    @property
    def preprocessing(self) -> Preprocessing:
        return self.family.preprocessing(self.model)

    @property
    def num_classes(self) -> int:
        return int(self.family.num_classes(self.model))

    def class_names(self) -> tuple[str, ...] | None:
        return self.family.class_names(self.model, self.num_classes)

    def blocks(self) -> list[BlockSources]:
        f, m = self.family, self.model
        tokens = TokenLayout(int(f.prefix_tokens(m)), f.patch_size(m))
        return [
            BlockSources(
                qkv=f.qkv(block),
                attention=f.attention(block),
                norm1=f.norm1(block),
                tokens=tokens,
                module=block,
            )
            for block in f.blocks(m)
        ]

    def prenorm_parts(self) -> PreNormViT:
        if self.family.prenorm is None:
            return super().prenorm_parts()
        return self.family.prenorm(self.model)

    def patch_embedding(self) -> nn.Module:
        if self.family.patch_embed is None:
            return super().patch_embedding()
        return self.family.patch_embed(self.model)

    def token_entry(self) -> nn.Module:
        if self.family.token_entry is None:
            return super().token_entry()
        return self.family.token_entry(self.model)

    # --- running --------------------------------------------------------------------------
    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.logits(self.model, x)

    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.family.head is None:
            return super().head_logits(tokens)
        return self.family.head(self.model, tokens)

    def scoring_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The forward, or the family's exact last-block shortcut where the head reads only
        the prefix rows (declared by ``pooling``); the shortcut itself may still decline."""
        if self.pooling in PREFIX_POOLINGS:
            out = self.family.prefix_rows_logits(self.model, x)
            if out is not None:
                return out
        return self.forward_logits(x)

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        with self.family.eager(self.model):
            yield

    def capture_path(self, *, qkv: bool, attention: bool) -> AbstractContextManager[None]:
        if attention or (qkv and self.family.qkv_on_eager_path):
            return self.eager_attention()
        return nullcontext()
