"""A comparable snapshot of everything xvit promises to leave untouched on a model."""

from __future__ import annotations

from typing import Any

from torch import nn

import xvit


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Module classes, modes, flags, requires_grad, .grad identities/values, hooks and
    attention settings."""
    state: dict[str, Any] = {"hooks": xvit.hook_counts(model)}
    state["classes"] = {n: type(m) for n, m in model.named_modules()}  # no class swapped
    # no forward replaced, on the module or on its class (lxt patches classes)
    state["forwards"] = {
        n: (vars(type(m)).get("forward"), vars(m).get("forward")) for n, m in model.named_modules()
    }
    state["modes"] = {n: m.training for n, m in model.named_modules()}
    state["fused"] = {n: m.fused_attn for n, m in model.named_modules() if hasattr(m, "fused_attn")}
    cfg = getattr(model, "config", None)
    state["attn_impl"] = getattr(cfg, "_attn_implementation", None)
    state["requires_grad"] = {n: p.requires_grad for n, p in model.named_parameters()}
    state["grad"] = {
        n: (id(p.grad), None if p.grad is None else p.grad.clone().tolist())
        for n, p in model.named_parameters()
    }
    state["weights"] = {n: p.detach().clone().sum().item() for n, p in model.named_parameters()}
    return state
