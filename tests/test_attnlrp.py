"""AttnLRP: unavailable without lxt (listed with the install command, skipped by ``all``,
refused by explain), and, where lxt is installed (``/work/venv-lrp``), equal to lxt's own
ViT example path: lxt's rules in torch's GELU / LayerNorm / MultiheadAttention classes,
lxt's zennit patch, zennit Gamma rules on Conv2d and Linear, backward of the target logit,
gradient x input summed over the channels. For timm models the oracle applies the same
rules to timm's LayerNorm and cuts the attention softmax by detaching the queries and keys
(as lxt's MultiheadAttention patch does), where xvit detaches the probabilities."""

from __future__ import annotations

import warnings

import pytest
import torch
from family_models import FAMILY_FACTORIES
from torch import nn

import xvit
from conftest import MODEL_FACTORIES, model_input
from model_state import snapshot
from xvit.methods.attnlrp import AttnLRP

TOL = dict(rtol=1e-4, atol=1e-6)


@pytest.fixture
def without_lxt(monkeypatch: pytest.MonkeyPatch) -> None:
    """AttnLRP as it is where its extra is not installed (whatever this environment has)."""
    monkeypatch.setattr(AttnLRP, "requires", ("xvit_test_absent_package",))


def test_explain_names_the_install_command(without_lxt) -> None:
    model = MODEL_FACTORIES["timm-vit"]()
    before = snapshot(model)
    with pytest.raises(xvit.MissingDependencyError, match=r"pip install xvit\[lrp\]"):
        xvit.explain("attnlrp", model, model_input(model, batch=1))
    assert snapshot(model) == before


def test_listed_as_unavailable_and_skipped_by_all_once(without_lxt) -> None:
    from click.testing import CliRunner

    from xvit.bench._specs import resolve_methods
    from xvit.cli import main
    from xvit.demo import demo_methods

    out = CliRunner().invoke(main, ["list"]).output
    assert "attnlrp" in out and "unavailable" in out and "pip install xvit[lrp]" in out
    for choose in (lambda: resolve_methods("all"), demo_methods):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = [e.name for e in choose()]
        assert "attnlrp" not in names and "gae" in names
        skipped = [w for w in caught if "attnlrp" in str(w.message)]
        assert len(skipped) == 1 and "pip install xvit[lrp]" in str(skipped[0].message)
    assert "attnlrp" in xvit.list_methods()  # still registered, and named explicitly it errs


def test_bad_gammas_are_refused() -> None:
    with pytest.raises(xvit.ParameterError, match="conv_gamma"):
        AttnLRP(conv_gamma=-1)


def test_unsupported_families_are_refused_clearly() -> None:
    model = MODEL_FACTORIES["hf-vit"]()
    assert not AttnLRP.supports(xvit.get_adapter(model))
    if AttnLRP.unavailable_reason() is None:
        with pytest.raises(xvit.UnsupportedModelError, match="timm and torchvision"):
            xvit.explain("attnlrp", model, model_input(model, batch=1))


# --- equal to lxt's example path (needs lxt: run in /work/venv-lrp) ------------------------
def _classes() -> list[type]:
    from timm.layers.norm import LayerNorm as TimmLayerNorm
    from zennit.core import BasicHook

    return [nn.GELU, nn.LayerNorm, TimmLayerNorm, nn.MultiheadAttention, BasicHook]


def _class_state() -> list[dict]:
    return [dict(vars(c)) for c in _classes()]


def lxt_example(model: nn.Module, x: torch.Tensor, target: torch.Tensor, conv_gamma, lin_gamma):
    """lxt's examples/vit_torch.py on ``model`` (torchvision as is; timm with its LayerNorm
    and q/k detached), every class patch undone afterwards."""
    import zennit.rules as z_rules
    from timm.layers.norm import LayerNorm as TimmLayerNorm
    from zennit.composites import LayerMapComposite

    # loads lxt.efficient's files (its package __init__ needs transformers 4.x); no rule here
    from xvit.methods.attnlrp import lxt_efficient

    patches, zennit_patches = lxt_efficient("patches"), lxt_efficient("zennit_patches")
    saved = [(c, dict(vars(c))) for c in _classes()]
    handles = []
    try:
        # lxt.efficient.models.vit_torch.cp_LRP, plus timm's own LayerNorm class
        patches.patch_method(patches.non_linear_forward, nn.GELU, keep_original=True)
        patches.patch_method(patches.layer_norm_forward, nn.LayerNorm)
        patches.patch_method(patches.layer_norm_forward, TimmLayerNorm)
        patches.patch_method(
            patches.cp_multi_head_attention_forward, nn.MultiheadAttention, keep_original=True
        )
        zennit_patches.monkey_patch_zennit()
        for block in getattr(model, "blocks", []):  # timm: eager path, q and k cut
            block.attn.fused_attn = False
            for norm in (block.attn.q_norm, block.attn.k_norm):
                handles.append(norm.register_forward_hook(lambda m, i, o: o.detach()))
        composite = LayerMapComposite(
            [(nn.Conv2d, z_rules.Gamma(conv_gamma)), (nn.Linear, z_rules.Gamma(lin_gamma))]
        )
        composite.register(model)
        x = x.clone().requires_grad_(True)
        y = model(x)
        y[torch.arange(len(x)), target].sum().backward()
        composite.remove()
        return (x * x.grad).sum(1).detach()
    finally:
        for handle in handles:
            handle.remove()
        for cls, state in saved:
            for key in set(vars(cls)) - set(state):
                delattr(cls, key)
            for key, value in state.items():
                if vars(cls).get(key) is not value:
                    setattr(cls, key, value)


CASES = {
    "digits-vit": lambda: xvit.load_model("xvit:digits-vit"),
    "timm-vit": MODEL_FACTORIES["timm-vit"],
    "torchvision-vit": FAMILY_FACTORIES["torchvision-vit"],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("gammas", [(0.25, 0.05), (100.0, 0.0)], ids=str)
def test_attnlrp_equals_lxts_example_path(case: str, gammas: tuple[float, float]) -> None:
    pytest.importorskip("lxt")
    model = CASES[case]()
    x = model_input(model, batch=2, seed=3)
    target = torch.tensor([1, 4])
    before, classes = snapshot(model), _class_state()
    ours = xvit.explain(
        "attnlrp", model, x, target=target, conv_gamma=gammas[0], linear_gamma=gammas[1]
    ).map
    assert snapshot(model) == before and _class_state() == classes
    reference = lxt_example(model, x, target, *gammas)
    torch.testing.assert_close(ours, reference, **TOL)
