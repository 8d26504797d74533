"""The one hook layer: capture q/k/v projections, attention probabilities and named layers.

Hooks exist only inside a ``with Capture(...)`` block: they are registered on entry and
removed in ``finally``; a capture of attention probabilities also switches the model to its
eager attention path for the block. Gradients are taken with :func:`torch.autograd.grad`, so
parameter ``.grad`` fields are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .._errors import CaptureError
from ._base import TOKEN_SUBSET, ModelAdapter, model_lock

QKV = ("q", "k", "v")


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise CaptureError(f"expected a tensor output, got {type(output).__name__}")


class _LinearRecorder(TorchFunctionMode):
    """Records the output of every ``F.linear`` call whose weight is one of the watched
    tensors (by identity), for blocks that call their fused projection functionally.

    Torch function modes are thread-local and live for the ``with`` block only; nothing on
    the model changes.
    """

    def __init__(self, by_weight: dict[int, int], store: list[list[torch.Tensor | None]]) -> None:
        super().__init__()
        self.by_weight = by_weight
        self.store = store

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            weight = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
            block = self.by_weight.get(id(weight))
            if block is not None:
                self.store[block][0] = out
        return out


class Capture:
    """Records tensors produced during forwards run inside the ``with`` block.

    Args:
        adapter: The model adapter whose capture points are used.
        qkv: Record every block's q, k and v projection outputs.
        attention: Record every block's attention probabilities. The model runs its eager
            attention path (:meth:`~xvit.ModelAdapter.eager_attention`) inside the block, as
            fused kernels never produce the probabilities; its own setting is back on exit.
        layers: Extra modules whose (first) output is recorded, by name.

    After a forward, :meth:`qkv` and :meth:`attentions` return lists (one tensor per block)
    and :meth:`grads` differentiates a scalar with respect to any recorded tensors.

    Example:
        >>> import torch, xvit
        >>> from xvit.models import Capture
        >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))
        >>> x = torch.randn(1, 3, 64, 64)
        >>> with Capture(adapter, qkv=True) as cap:
        ...     logits = adapter.logits(x.requires_grad_(True))
        ...     grads = cap.qkv_grads(logits[0, 3])
        >>> len(grads["q"]), grads["q"][0].shape  # one B x N x D tensor per block
        (6, torch.Size([1, 65, 96]))
        >>> with Capture(adapter, attention=True) as cap:  # eager attention for the block
        ...     _ = adapter.logits(x)
        >>> cap.attentions()[0].shape  # B x heads x N x N
        torch.Size([1, 3, 65, 65])
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        *,
        qkv: bool = False,
        attention: bool = False,
        layers: Mapping[str, nn.Module] | None = None,
    ) -> None:
        self.adapter = adapter
        self.want_qkv = qkv
        self.want_attention = attention
        self.layer_modules = dict(layers or {})
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._qkv_raw: list[list[torch.Tensor | None]] = []
        self._attn: list[torch.Tensor | None] = []
        self._layers: dict[str, torch.Tensor | None] = {}
        self._lock = model_lock(adapter.model)
        self._stack = ExitStack()

    # --- context --------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        # the model's lock is held while the hooks exist, so another thread's forward
        # (through xvit) cannot run into them
        self._lock.acquire()
        try:
            needs = ("qkv",) * self.want_qkv + ("attention",) * self.want_attention
            self.adapter.require(*needs)
            self._stack.enter_context(
                self.adapter.capture_path(qkv=self.want_qkv, attention=self.want_attention)
            )
            blocks = self.adapter.blocks()
            if self.want_qkv:
                self._qkv_raw = [[None] * len(b.qkv.modules) for b in blocks]
                by_weight: dict[int, int] = {}
                for i, block in enumerate(blocks):
                    if block.qkv.weight is not None:
                        by_weight[id(block.qkv.weight)] = i
                        continue
                    for j, module in enumerate(block.qkv.modules):
                        self._hook(module, self._store_qkv(i, j))
                if by_weight:
                    self._stack.enter_context(_LinearRecorder(by_weight, self._qkv_raw))
            if self.want_attention:
                self._attn = [None] * len(blocks)
                for i, block in enumerate(blocks):
                    source = block.attention
                    if source is None:
                        raise CaptureError(
                            f"block {i} of this {type(self.adapter.model).__name__} has no "
                            f"attention probabilities to record"
                        )
                    self._hook(source.module, self._store_attention(i, source))
            for name, module in self.layer_modules.items():
                self._layers[name] = None
                self._hook(module, self._store_layer(name))
        except BaseException:
            self.remove()
            try:
                self._stack.close()
            finally:
                self._lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.remove()
        finally:
            try:
                self._stack.close()  # the model's own attention setting is back
            finally:
                self._lock.release()

    def remove(self) -> None:
        """Remove every hook this capture registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, module: nn.Module, fn: Any) -> None:
        self._handles.append(module.register_forward_hook(fn))

    def _store_qkv(self, i: int, j: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            self._qkv_raw[i][j] = _first_tensor(out)

        return hook

    def _store_attention(self, i: int, source: Any) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            self._attn[i] = source.extract(out)

        return hook

    def _store_layer(self, name: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            self._layers[name] = _first_tensor(out)

        return hook

    # --- results --------------------------------------------------------------------------
    def raw_qkv(self) -> list[torch.Tensor]:
        """The recorded projection outputs as the modules produced them (fused or not)."""
        flat: list[torch.Tensor] = []
        for i, outs in enumerate(self._qkv_raw):
            for t in outs:
                if t is None:
                    raise CaptureError(
                        f"no q/k/v projection output was recorded for block {i}: the model's "
                        f"structure does not match its {type(self.adapter).__name__} (was the "
                        f"block replaced or its forward changed?)"
                    )
                flat.append(t)
        if not flat:
            raise CaptureError("no q/k/v projection outputs recorded: run a forward first")
        return flat

    def _split(self, flat: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {k: [] for k in QKV}
        pos = 0
        for block in self.adapter.blocks():
            d = block.qkv.hidden_size
            if block.qkv.fused:
                t = flat[pos]
                pos += 1
                if t.shape[-1] != 3 * d:
                    raise CaptureError(
                        f"fused qkv output has {t.shape[-1]} channels, expected 3 x {d}"
                    )
                for n, name in enumerate(QKV):
                    out[name].append(t[..., n * d : (n + 1) * d])
            else:
                for name in QKV:
                    out[name].append(flat[pos])
                    pos += 1
        return out

    def qkv(self) -> dict[str, list[torch.Tensor]]:
        """{"q": [...], "k": [...], "v": [...]}, one B x N x D tensor per block."""
        return self._split(self.raw_qkv())

    def qkv_grads(self, score: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Gradients of the scalar ``score`` with respect to every q, k and v output."""
        raw = self.raw_qkv()
        return self._split(self.grads(score, raw))

    def attentions(self) -> list[torch.Tensor]:
        """Attention probabilities, one B x heads x N x N tensor per block."""
        out: list[torch.Tensor] = []
        for i, a in enumerate(self._attn):
            if a is None:
                raise CaptureError(
                    f"no attention probabilities were recorded for block {i}: the block ran a "
                    f"fused attention path or its structure was modified"
                )
            out.append(a)
        if not out:
            raise CaptureError("no attention probabilities recorded: run a forward first")
        return out

    def layer(self, name: str) -> torch.Tensor:
        """The recorded output of the named extra layer."""
        t = self._layers.get(name)
        if t is None:
            raise CaptureError(
                f"layer {name!r} recorded nothing during the forward: is it part of the model "
                f"and on the path to the logits?"
            )
        return t

    @staticmethod
    def grads(
        score: torch.Tensor, tensors: Sequence[torch.Tensor], *, retain_graph: bool = False
    ) -> list[torch.Tensor]:
        """d score / d tensor for each tensor; zeros where the score does not depend on it.
        ``retain_graph`` keeps the forward's graph for another score (one per block in
        LeGrad)."""
        if not score.requires_grad:
            raise CaptureError("the score does not depend on the captured tensors")
        grads = torch.autograd.grad(
            score, list(tensors), allow_unused=True, retain_graph=retain_graph
        )
        return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


class TokenSubset:
    """Runs the model on a subset of its patch tokens inside the ``with`` block.

    A forward hook on the adapter's :meth:`~xvit.ModelAdapter.token_entry` (the token
    sequence the first block reads, positions already added) keeps, for row b of a batch,
    every prefix token (CLS, distillation, registers) and the patch tokens ``index[b]``
    named by :meth:`keep`, in that order; the rest of the model's own forward runs on the
    shorter sequence. The hook exists only inside the block; it needs the adapter's
    ``"token_subset"`` capability.

    Example:
        >>> import torch, xvit
        >>> from xvit.models import Capture, TokenSubset
        >>> adapter = xvit.get_adapter(xvit.load_model("xvit:digits-vit"))
        >>> last = adapter.blocks()[-1].module
        >>> with TokenSubset(adapter) as subset, Capture(adapter, layers={"out": last}) as cap:
        ...     subset.keep(torch.tensor([[0, 1, 2, 9]]))  # 4 of the 64 patches, CLS kept
        ...     _ = adapter.logits(torch.randn(1, 3, 64, 64))
        >>> cap.layer("out").shape
        torch.Size([1, 5, 96])
    """

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self._index: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._prefix = 0
        self._lock = model_lock(adapter.model)
        #: Whether the hook has run since the last :meth:`keep`.
        self.applied = False

    def __enter__(self) -> TokenSubset:
        self._lock.acquire()
        try:
            self.adapter.require(TOKEN_SUBSET)
            self._prefix = int(self.adapter.geometry.num_prefix_tokens)
            self._handle = self.adapter.token_entry().register_forward_hook(self._hook)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
        finally:
            self._lock.release()

    def keep(self, index: torch.Tensor | None) -> None:
        """The patch tokens each row of the next forwards keeps: a B x K integer tensor of
        positions among the patch tokens (0 .. patches - 1, raster order), or None for all
        tokens. A forward on more rows than ``index`` has (a batch padded for a compiled
        forward) gives the extra rows the last row's tokens."""
        if index is not None and (index.dim() != 2 or index.is_floating_point()):
            raise CaptureError(
                f"keep takes a B x K integer tensor of patch positions, got "
                f"{tuple(index.shape)} {index.dtype}"
            )
        self._index = index
        self.applied = False

    def check_applied(self) -> None:
        """Raise :class:`~xvit.CaptureError` unless a forward has dropped tokens since the last
        :meth:`keep` (the token entry did not run: the model's structure changed)."""
        if not self.applied:
            raise CaptureError(
                f"the token entry {type(self.adapter.token_entry()).__name__} of this "
                f"{type(self.adapter.model).__name__} did not run in the forward, so no token "
                f"was dropped; was the model's forward or structure modified?"
            )

    def _hook(self, _m: nn.Module, _inp: Any, out: Any) -> torch.Tensor | None:
        if self._index is None:
            return None
        if not isinstance(out, torch.Tensor) or out.dim() != 3:
            raise CaptureError(
                f"the token entry of this {type(self.adapter.model).__name__} returned "
                f"{type(out).__name__}, not a B x N x D token sequence"
            )
        b, n, d = out.shape
        index = self._index.to(out.device)
        if index.shape[0] > b:
            raise CaptureError(f"keep named tokens for {index.shape[0]} rows, the batch has {b}")
        if index.shape[0] < b:
            index = torch.cat([index, index[-1:].expand(b - index.shape[0], -1)])
        patches = n - self._prefix
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= patches):
            raise CaptureError(
                f"keep names patch positions {int(index.min())} .. {int(index.max())}, but the "
                f"sequence has {patches} patch tokens"
            )
        kept = out[:, self._prefix :].gather(1, index.unsqueeze(-1).expand(-1, -1, d))
        self.applied = True
        return torch.cat([out[:, : self._prefix], kept], dim=1)
