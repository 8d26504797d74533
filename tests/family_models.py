"""Tiny models of the families beyond timm/HF ViT and DeiT (issue 14), with the oracles the
tests compare against: each family's own eager attention probabilities, taken through a
route xvit does not use, and its q/k/v for the GradMask reference."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NUM_CLASSES = 5


def _randomise_zero_inits(model: nn.Module) -> nn.Module:
    """Families zero-initialise heads, biases and relative tables: give them values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=NUM_CLASSES,
    )
    return _randomise_zero_inits(model).eval()  # its head starts at zero


#: The size of every tiny HF vision config here (a 4 x 4 patch grid, 3 blocks).
TINY_HF = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=NUM_CLASSES,
)


def hf_dinov2(registers: int = 0) -> nn.Module:
    from transformers import Dinov2Config, Dinov2ForImageClassification

    kw = dict(TINY_HF)
    torch.manual_seed(0)
    if registers:  # transformers 4.48 and later
        from transformers import (
            Dinov2WithRegistersConfig,
            Dinov2WithRegistersForImageClassification,
        )

        config = Dinov2WithRegistersConfig(**kw, num_register_tokens=registers)
        return Dinov2WithRegistersForImageClassification(config).eval()
    return Dinov2ForImageClassification(Dinov2Config(**kw)).eval()


#: name -> factory of a tiny model of a new family
FAMILY_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "torchvision-vit": torchvision_vit,
    "hf-dinov2": hf_dinov2,
    "hf-dinov2-registers": lambda: hf_dinov2(registers=4),
}


# --- oracles: the model's own attention probabilities --------------------------------------
def torchvision_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-head probabilities from torch's own MHA (``need_weights=True``), per block."""
    found: list[torch.Tensor] = []
    handles = []

    def pre(_m, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def post(_m, _args, out):
        found.append(out[1])

    for block in model.encoder.layers:
        handles.append(block.self_attention.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.self_attention.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def hf_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``output_attentions`` of the model's own forward on its eager path."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        with torch.no_grad():
            return list(model(pixel_values=x, output_attentions=True).attentions)
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


PROBABILITIES: dict[str, Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]] = {
    "torchvision-vit": torchvision_probabilities,
    "hf-dinov2": hf_probabilities,
    "hf-dinov2-registers": hf_probabilities,
}


def _timm(name: str, **kw) -> nn.Module:
    import timm

    torch.manual_seed(0)
    base = dict(
        pretrained=False,
        num_classes=NUM_CLASSES,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
    )
    return _randomise_zero_inits(timm.create_model(name, **{**base, **kw})).eval()


def timm_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """timm's own eager branch (``fused_attn`` off, set by this test): ``attn_drop`` input."""
    found: list[torch.Tensor] = []
    attns = [b.attn for b in model.blocks]
    saved = [a.fused_attn for a in attns]
    handles = [
        a.attn_drop.register_forward_hook(lambda _m, i, _o: found.append(i[0])) for a in attns
    ]
    try:
        for a in attns:
            a.fused_attn = False
        with torch.no_grad():
            model(x)
    finally:
        for a, s in zip(attns, saved):
            a.fused_attn = s
        for h in handles:
            h.remove()
    return found


FAMILY_FACTORIES.update(
    {
        "timm-eva02-fused": lambda: _timm(
            "eva02_tiny_patch14_224", ref_feat_shape=(4, 4), qkv_fused=True
        ),
        "timm-eva02-separate": lambda: _timm(
            "eva02_tiny_patch14_224", ref_feat_shape=(4, 4), qkv_fused=False, num_reg_tokens=2
        ),
        "timm-beit-avg": lambda: _timm("beitv2_base_patch16_224", global_pool="avg"),
        "timm-beit-token": lambda: _timm("beitv2_base_patch16_224", global_pool="token"),
    }
)
for _name in ("timm-eva02-fused", "timm-eva02-separate", "timm-beit-avg", "timm-beit-token"):
    PROBABILITIES[_name] = timm_probabilities


# --- xvit.zero_shot over HF CLIP and SigLIP (prompts as classes) ---------------------------
def hf_image_text(kind: str) -> nn.Module:
    """A tiny HF ``CLIPModel`` or ``SiglipModel`` (the user's model, not yet wrapped)."""
    import math

    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    text = dict(tiny, vocab_size=40, max_position_embeddings=16, pad_token_id=0, bos_token_id=1)
    text["eos_token_id"] = 2
    vision = dict(tiny, image_size=32, patch_size=8)
    torch.manual_seed(0)
    if kind == "clip":
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        return CLIPModel(config).eval()
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # HF initialises both to 0
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(-2.5)
    return model


def zero_shot_text_features(model: nn.Module, prompts: int = NUM_CLASSES) -> torch.Tensor:
    """Text features of random prompts from the model's own text tower."""
    ids = torch.randint(3, 40, (prompts, 7), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = 2  # an end token
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # 4.x / 5.x


def hf_zero_shot(kind: str) -> nn.Module:
    import xvit

    model = hf_image_text(kind)
    return xvit.zero_shot(model, text_features=zero_shot_text_features(model))


def zero_shot_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``output_attentions`` of the wrapped vision tower's own forward, eager path."""
    return hf_probabilities(model.vision_model, x)


for _name, _kind in (("hf-clip-zero-shot", "clip"), ("hf-siglip-zero-shot", "siglip")):
    FAMILY_FACTORIES[_name] = lambda kind=_kind: hf_zero_shot(kind)
    PROBABILITIES[_name] = zero_shot_probabilities


# --- HF BEiT (5.x layout) and Data2VecVision (4.x layout, SDPA class chosen at build) -----
def hf_beit(kind: str = "beit", **kw) -> nn.Module:
    """A tiny HF BEiT or Data2VecVision classifier with position information: relative
    bias tables (zero-initialised by HF) filled with noise."""
    import transformers

    name = {"beit": "Beit", "data2vec": "Data2VecVision"}[kind]
    config = getattr(transformers, f"{name}Config")(**TINY_HF, **kw)
    torch.manual_seed(0)
    model = getattr(transformers, f"{name}ForImageClassification")(config)
    return _randomise_zero_inits(model).eval()


def eager_twin_probabilities(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``output_attentions`` of a copy of the model built on the eager attention path (its
    self-attention classes are chosen at build time) with the very same weights."""
    import copy

    config = copy.deepcopy(model.config)
    config._attn_implementation = "eager"
    twin = type(model)(config)
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        return list(twin.eval()(pixel_values=x, output_attentions=True).attentions)


HF_BEIT_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "hf-beit-mean": lambda: hf_beit(use_relative_position_bias=True),
    "hf-beit-token": lambda: hf_beit(
        use_shared_relative_position_bias=True,
        use_absolute_position_embeddings=True,
        use_mean_pooling=False,
    ),
    "hf-data2vec": lambda: hf_beit("data2vec", use_relative_position_bias=True),
}
FAMILY_FACTORIES.update(HF_BEIT_FACTORIES)
for _name in HF_BEIT_FACTORIES:
    PROBABILITIES[_name] = eager_twin_probabilities
