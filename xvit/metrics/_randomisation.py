"""Cascading randomisation of a model's layers, from the output down (Adebayo et al., 2018).

A *layer* is a module that owns its initialisation: it has ``reset_parameters()``
(``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``, ...), as in Quantus' ``MPRT``. Parameters
no such module owns (timm's ``cls_token`` and ``pos_embed``, the in-projection of torch's
``nn.MultiheadAttention``) are never randomised. The cascade is a list of
:class:`CascadeStep` at one of two granularities (:data:`GRANULARITIES`):

- ``"blocks"``: the head (every layer after the last transformer block: final norm,
  classifier), then each block from the last to the first, then the embeddings (every layer
  before the first block: the patch projection). The blocks are the adapter's.
- ``"modules"``: every layer on its own, in the reverse of ``model.named_modules()`` order:
  Quantus' ``top_down`` sequence, step for step.

:func:`randomise` resets one step's layers, each with torch's CPU generator seeded to
``seed + 1`` just before (Quantus' rule, so ``seed`` gives the weights of Quantus'
``MPRT(seed=seed)``; two layers of one shape get the same draws). The draws are made on a
CPU copy of the layer and copied in, so the weights do not depend on the device, and the
global generator is restored afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._errors import UnsupportedModelError

#: The granularities of the cascade.
GRANULARITIES = ("blocks", "modules")


@dataclass(frozen=True)
class CascadeStep:
    """One step of the cascade: its label and the layers it randomises (qualified names)."""

    label: str
    layers: tuple[str, ...]


def _resettable(module: nn.Module) -> bool:
    return callable(getattr(module, "reset_parameters", None))


def cascade(model: nn.Module, blocks: Sequence[nn.Module], granularity: str) -> list[CascadeStep]:
    """The steps that randomise ``model`` from the top, at ``granularity``.

    Args:
        model: The model.
        blocks: Its transformer blocks, first to last (from the adapter).
        granularity: ``"blocks"`` or ``"modules"`` (see the module docstring).

    Raises:
        UnsupportedModelError: The model has no layer with ``reset_parameters``.

    Example:
        >>> import xvit
        >>> m = xvit.load_model("xvit:digits-vit")
        >>> [s.label for s in cascade(m, list(m.blocks), "blocks")]  # doctest: +ELLIPSIS
        ['head', 'block 5', 'block 4', ..., 'block 0', 'embeddings']
        >>> cascade(m, list(m.blocks), "blocks")[0].layers
        ('norm', 'head')
        >>> [s.label for s in cascade(m, list(m.blocks), "modules")][:3]
        ['head', 'norm', 'blocks.5.mlp.fc2']
    """
    named = list(model.named_modules())
    if granularity == "modules":
        steps = [
            CascadeStep(name, (name,)) for name, module in reversed(named) if _resettable(module)
        ]
    else:
        steps = _block_steps(named, blocks)
    if not steps:
        raise UnsupportedModelError(
            f"this {type(model).__name__} has no layer with reset_parameters() to randomise; "
            f"MPRT randomises modules such as nn.Linear, nn.Conv2d and nn.LayerNorm"
        )
    return steps


def _block_steps(
    named: list[tuple[str, nn.Module]], blocks: Sequence[nn.Module]
) -> list[CascadeStep]:
    """Head, blocks last to first, embeddings; steps without a layer are left out."""
    name_of = {id(module): name for name, module in named}
    roots = [name_of[id(block)] for block in blocks]
    position = {name: i for i, (name, _) in enumerate(named)}
    first = min(position[r] for r in roots)

    def within(name: str, root: str) -> bool:
        return root == "" or name == root or name.startswith(root + ".")

    members: dict[str, list[str]] = {label: [] for label in ("head", "embeddings")}
    per_block: list[list[str]] = [[] for _ in roots]
    for name, module in named:
        if not _resettable(module) or any(within(r, name) for r in roots):
            continue  # not a layer, or a block's ancestor (which would reset whole blocks)
        owner = next((i for i, r in enumerate(roots) if within(name, r)), None)
        if owner is not None:
            per_block[owner].append(name)
        else:
            members["embeddings" if position[name] < first else "head"].append(name)
    labelled = [("head", members["head"])]
    labelled += [(f"block {i}", per_block[i]) for i in reversed(range(len(roots)))]
    labelled.append(("embeddings", members["embeddings"]))
    return [CascadeStep(label, tuple(layers)) for label, layers in labelled if layers]


def randomise(model: nn.Module, step: CascadeStep, seed: int) -> None:
    """Reset the layers of ``step`` in ``model`` in place (see the module docstring)."""
    modules = dict(model.named_modules())
    for name in step.layers:
        module = modules[name]
        twin = copy.deepcopy(module).to("cpu")
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((seed + 1) % 2**64)
            twin.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            module.load_state_dict(twin.state_dict())
