"""The last-layer shortcut of ``ModelAdapter.scoring_logits`` (HF and timm adapters).

Where the classifier reads only the prefix rows (CLS, distillation token), the last layer
computes queries and the MLP for those rows alone. These tests check that the logits equal
the plain forward's, that the shortcut really runs (the last layer's MLP sees only the rows
the head reads: a class-level spy, since hooks on the last layer make the HF shortcut fall
back), and that it steps aside wherever it cannot be exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

import xvit
from conftest import DEPTH, HF_CONFIG, MODEL_FACTORIES, NUM_CLASSES, model_input

ATOL = 1e-5


def _spread(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights far from the near-zero init, so wrong rows or scales show in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _hf(
    model_class: str,
    image_size: int | tuple[int, int] = 32,
    depth: int = DEPTH,
    **config: Any,
) -> nn.Module:
    import transformers

    config_class = "ViTConfig" if model_class.startswith("ViT") else "DeiTConfig"
    cfg = getattr(transformers, config_class)(
        **{**HF_CONFIG, "num_hidden_layers": depth}, image_size=image_size, **config
    )
    torch.manual_seed(0)
    return _spread(getattr(transformers, model_class)(cfg))


#: name -> (factory, rows the classifier reads)
HF_CASES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "vit": (lambda: _hf("ViTForImageClassification"), 1),
    "vit-rect": (lambda: _hf("ViTForImageClassification", (32, 48)), 1),
    "vit-eager-2-layers": (
        lambda: _hf("ViTForImageClassification", depth=2, attn_implementation="eager"),
        1,
    ),
    "vit-no-qkv-bias-gelu-new": (
        lambda: _hf("ViTForImageClassification", qkv_bias=False, hidden_act="gelu_new"),
        1,
    ),
    "deit": (lambda: _hf("DeiTForImageClassification"), 1),
    "deit-teacher": (lambda: _hf("DeiTForImageClassificationWithTeacher"), 2),
    "deit-teacher-rect": (lambda: _hf("DeiTForImageClassificationWithTeacher", (32, 48)), 2),
    "deit-teacher-1-layer": (lambda: _hf("DeiTForImageClassificationWithTeacher", depth=1), 2),
}


@contextmanager
def mlp_rows(
    monkeypatch: pytest.MonkeyPatch, layers: list[nn.Module], attr: str = "mlp"
) -> Iterator[list[list[int]]]:
    """Rows each layer's ``attr`` module sees, per layer, recorded by patching its class's
    ``forward`` (instance hooks would change what is being measured)."""
    index = {id(getattr(layer, attr)): i for i, layer in enumerate(layers)}
    seen: list[list[int]] = [[] for _ in layers]
    cls = type(getattr(layers[0], attr))
    original = cls.forward

    def spy(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if id(self) in index:
            seen[index[id(self)]].append(int(hidden_states.shape[1]))
        return original(self, hidden_states, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(cls, "forward", spy)
        yield seen


def _mlp_attr(adapter: Any) -> str:
    """The MLP's first module in an HF layer: ``mlp`` (5.x) or ``intermediate`` (4.x)."""
    return "intermediate" if adapter.legacy_layout else "mlp"


def _check_scoring(
    model: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    batch: int = 3,
    adapter: xvit.ModelAdapter | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Assert scoring == forward; return the MLP rows each saw (scoring, forward)."""
    adapter = adapter or xvit.get_adapter(model)
    x = model_input(model, batch=batch)
    layers = adapter.layers  # type: ignore[attr-defined]
    mlp = _mlp_attr(adapter)
    with torch.no_grad(), mlp_rows(monkeypatch, layers, mlp) as scoring_rows:
        fast = adapter.scoring_logits(x)
    with torch.no_grad(), mlp_rows(monkeypatch, layers, mlp) as forward_rows:
        plain = adapter.forward_logits(x)
    assert fast.shape == plain.shape == (batch, NUM_CLASSES)
    assert plain.abs().max() > 0.1  # the logits are not all near zero
    torch.testing.assert_close(fast, plain, rtol=0, atol=ATOL)
    return scoring_rows, forward_rows


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_shortcut_equals_forward_and_skips_patch_rows(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, keep = HF_CASES[case]
    model = factory()
    n = xvit.get_adapter(model).geometry.num_tokens()
    scoring, forward = _check_scoring(model, monkeypatch)
    assert forward == [[n]] * len(forward)  # the spy sees the plain forward
    assert scoring == [[n]] * (len(scoring) - 1) + [[keep]]


def test_hf_conftest_models_take_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, keep in [("hf-vit", 1), ("hf-deit", 1), ("hf-deit-teacher", 2)]:
        scoring, _ = _check_scoring(MODEL_FACTORIES[name](), monkeypatch)
        assert scoring[-1] == [keep], name


def test_hf_pixel_dtype_is_cast_like_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HF_CASES["deit-teacher"][0]()
    adapter = xvit.get_adapter(model)
    x = model_input(model).double()
    with torch.no_grad(), mlp_rows(monkeypatch, adapter.layers) as rows:  # type: ignore[attr-defined]
        fast = adapter.scoring_logits(x)
    assert fast.dtype == torch.float32 and rows[-1] == [2]
    with torch.no_grad():
        torch.testing.assert_close(fast, adapter.forward_logits(x), rtol=0, atol=ATOL)


def _assert_falls_back(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch, adapter: xvit.ModelAdapter | None = None
) -> None:
    n = xvit.get_adapter(model).geometry.num_tokens()
    scoring, _ = _check_scoring(model, monkeypatch, adapter=adapter)
    assert scoring[-1] == [n]


def _mean_pooled_vit() -> nn.Module:
    """A ``ViTForImageClassification`` subclass whose head averages every token."""
    from transformers import ViTForImageClassification

    class MeanPooled(ViTForImageClassification):
        def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
            out = self.vit(pixel_values)
            logits = self.classifier(out.last_hidden_state.mean(dim=1))
            return type("Out", (), {"logits": logits})()

    model = _hf("ViTForImageClassification")
    model.__class__ = MeanPooled
    return model


def test_hf_avg_pooled_subclass_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mean_pooled_vit()
    assert type(xvit.get_adapter(model)).__name__ == "HFViTAdapter"
    _assert_falls_back(model, monkeypatch)


def test_hf_training_mode_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HF_CASES["deit-teacher"][0]().train()  # dropout probabilities are 0: deterministic
    _assert_falls_back(model, monkeypatch)
    model = HF_CASES["vit"][0]()
    model.vit.layers[-1].train()  # only the last layer in training mode
    _assert_falls_back(model, monkeypatch)


def test_hf_inside_eager_attention_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HF_CASES["vit"][0]()
    adapter = xvit.get_adapter(model)
    with adapter.eager_attention():
        _assert_falls_back(model, monkeypatch, adapter)
    scoring, _ = _check_scoring(model, monkeypatch, adapter=adapter)
    assert scoring[-1] == [1]  # and the flag is cleared on exit


@pytest.mark.parametrize(
    "where", ["model", "backbone", "last-layer", "last-mlp", "last-q", "final-norm"]
)
def test_hf_hooks_make_it_fall_back(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model: Any = HF_CASES["deit-teacher"][0]()
    last = model.deit.layers[-1]
    module = {
        "model": model,
        "backbone": model.deit,
        "last-layer": last,
        "last-mlp": last.mlp,
        "last-q": last.attention.q_proj,
        "final-norm": model.deit.layernorm,
    }[where]
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(1))
    try:
        _assert_falls_back(model, monkeypatch)
    finally:
        handle.remove()
    assert seen
    scoring, _ = _check_scoring(model, monkeypatch)
    assert scoring[-1] == [2]  # shortcut back once the hook is gone


def test_hf_replaced_forward_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model: Any = HF_CASES["vit"][0]()
    last = model.vit.layers[-1]
    original = last.forward
    last.forward = lambda *a, **k: original(*a, **k)  # as accelerate's device hooks do
    _assert_falls_back(model, monkeypatch)


def test_hf_modified_last_layer_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model: Any = HF_CASES["vit"][0]()
    model.vit.layers[-1].layernorm_after = nn.Identity()
    _assert_falls_back(model, monkeypatch)
    model = HF_CASES["vit"][0]()
    model.vit.layernorm = nn.Identity()
    _assert_falls_back(model, monkeypatch)


def test_hf_attention_mask_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mask other than None (flex attention's BlockMask) is not re-implemented."""
    from xvit.models import hf_vit

    monkeypatch.setattr(hf_vit, "bidirectional_mask", lambda config, embeddings: object())
    _assert_falls_back(HF_CASES["vit"][0](), monkeypatch)


@pytest.mark.slow
def test_hf_flex_attention_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_falls_back(
        _hf("ViTForImageClassification", depth=2, attn_implementation="flex_attention"),
        monkeypatch,
    )


# --- timm (test_kernel.py covers equality for every tiny model and timm-vit's row count) -------
@pytest.mark.parametrize(("name", "keep"), [("timm-deit-distilled", 2), ("timm-vit-registers", 4)])
def test_timm_shortcut_keeps_the_prefix_rows(
    name: str, keep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model: Any = MODEL_FACTORIES[name]()
    scoring, forward = _timm_rows(model, monkeypatch)
    n = xvit.get_adapter(model).geometry.num_tokens()
    assert forward[-1] == [n] and scoring[-1] == [keep] and scoring[0] == [n]


@pytest.mark.parametrize("name", ["timm-vit-avgpool", "timm-vit-train"])
def test_timm_shortcut_falls_back(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model: Any = MODEL_FACTORIES[name.replace("-train", "")]()
    if name.endswith("-train"):
        model.train()  # drop rates are 0: deterministic
    scoring, _ = _timm_rows(model, monkeypatch)
    assert scoring[-1] == [xvit.get_adapter(model).geometry.num_tokens()]


@contextmanager
def linear_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(input rows, output features) of every ``F.linear`` the timm shortcut calls itself."""
    import xvit.models.timm_vit as timm_vit

    calls: list[tuple[int, int]] = []
    functional = torch.nn.functional

    class Spy:  # timm_vit's ``F``, with linear recorded (modules keep the real one)
        def __getattr__(self, name: str) -> Any:
            return getattr(functional, name)

        @staticmethod
        def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> Any:
            calls.append((int(x.shape[1]), int(w.shape[0])))
            return functional.linear(x, w, b)

    with monkeypatch.context() as m:
        m.setattr(timm_vit, "F", Spy())
        yield calls


@pytest.mark.parametrize(
    ("build", "keep"),
    [
        (lambda: MODEL_FACTORIES["timm-vit"](), 1),
        (lambda: MODEL_FACTORIES["timm-deit-distilled"](), 2),
        (lambda: MODEL_FACTORIES["timm-vit-registers"](), 4),
        (lambda: _timm_model("vit_tiny_patch16_224", qkv_bias=False), 1),
    ],
    ids=["vit", "deit-distilled", "registers", "no-qkv-bias"],
)
def test_timm_last_block_projects_queries_of_the_kept_rows_only(
    build: Callable[[], nn.Module], keep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model: Any = _spread(build())
    n = xvit.get_adapter(model).geometry.num_tokens()
    d = model.embed_dim
    with linear_calls(monkeypatch) as calls:
        _timm_rows(model, monkeypatch)  # equal to the plain forward
    assert (keep, d) in calls and (n, 2 * d) in calls and (n, 3 * d) not in calls


def test_timm_wrapped_qkv_keeps_its_own_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    class Wrapped(nn.Linear):  # a LoRA-style subclass may change what the projection does
        pass

    model: Any = _spread(MODEL_FACTORIES["timm-vit"]())
    model.blocks[-1].attn.qkv.__class__ = Wrapped
    with linear_calls(monkeypatch) as calls:
        scoring, _ = _timm_rows(model, monkeypatch)
    assert calls == [] and scoring[-1] == [1]  # the shortcut, through the module's forward


def _timm_model(name: str, **kw: Any) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        name,
        pretrained=False,
        num_classes=NUM_CLASSES,
        embed_dim=32,
        depth=DEPTH,
        num_heads=2,
        img_size=32,
        patch_size=8,
        **kw,
    ).eval()


def _timm_rows(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[list[int]], list[list[int]]]:
    adapter = xvit.get_adapter(model)
    x = model_input(model, batch=3)
    blocks = list(model.blocks)
    with torch.no_grad(), mlp_rows(monkeypatch, blocks) as scoring:
        fast = adapter.scoring_logits(x)
    with torch.no_grad(), mlp_rows(monkeypatch, blocks) as forward:
        plain = adapter.forward_logits(x)
    torch.testing.assert_close(fast, plain, rtol=0, atol=ATOL)
    return scoring, forward


# --- transformers 4.x layout (run by .ci/run in its transformers 4 environment) ---------------
@pytest.mark.transformers4
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize(
    ("model_class", "size", "keep"),
    [
        ("ViTForImageClassification", 32, 1),
        ("DeiTForImageClassification", 32, 1),
        ("DeiTForImageClassificationWithTeacher", (24, 40), 2),
    ],
)
def test_legacy_layout_shortcut(
    impl: str,
    model_class: str,
    size: int | tuple[int, int],
    keep: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _hf(model_class, size, attn_implementation=impl)
    adapter: Any = xvit.get_adapter(model)
    assert adapter.legacy_layout
    family = "ViT" if model_class.startswith("ViT") else "DeiT"
    attention = type(adapter.layers[-1].attention.attention).__name__
    assert attention == f"{family}{'Sdpa' if impl == 'sdpa' else ''}SelfAttention"
    n = adapter.geometry.num_tokens()
    scoring, forward = _check_scoring(model, monkeypatch)
    assert forward == [[n]] * len(forward)
    assert scoring == [[n]] * (len(scoring) - 1) + [[keep]]
    model.train()  # dropout probabilities are 0: deterministic, and the plain forward
    _assert_falls_back(model, monkeypatch)


@pytest.mark.transformers4
def test_legacy_conftest_models_take_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, keep in [("hf-vit", 1), ("hf-deit", 1), ("hf-deit-teacher", 2)]:
        model = MODEL_FACTORIES[name]()
        assert xvit.get_adapter(model).legacy_layout, name  # type: ignore[attr-defined]
        scoring, _ = _check_scoring(model, monkeypatch)
        assert scoring[-1] == [keep], name
