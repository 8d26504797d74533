"""xvit.zero_shot: an image-text model's vision side as a classifier over text prompts.

Its logits equal the model's own ``logits_per_image`` (HF CLIPModel, SiglipModel) and
open_clip's ``get_logits`` (when open_clip is installed), from text features or from prompts
and a tokenizer; it shares the model's vision modules and leaves the model as it was.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

import xvit
from model_state import snapshot
from xvit.models import ZeroShotClassifier

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(TINY, vocab_size=40, max_position_embeddings=16, pad_token_id=0, bos_token_id=1)
VISION = dict(TINY, image_size=32, patch_size=8)
WORDS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "photo", "of", "cat", "dog", "bird", "car"]
PROMPTS = ["a photo of a cat", "a photo of a dog", "a bird", "car"]
TOL = dict(atol=1e-5, rtol=1e-5)


def _clip() -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(TEXT, eos_token_id=2), vision_config=VISION, projection_dim=16
    )
    return CLIPModel(config).eval()


def _siglip() -> nn.Module:
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
    with torch.no_grad():  # HF initialises both to 0: give them values a test can see
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(-2.5)
    return model


FACTORIES = {"clip": _clip, "siglip": _siglip}


def _text_features(model: nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    """The model's own text embeddings (a tensor in transformers 4.x, an output in 5.x)."""
    with torch.no_grad():
        out = model.get_text_features(**inputs)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _tokenizer(max_length: int = 8):
    """A word-level HF tokenizer built offline, over WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", model_max_length=max_length
    )


def _pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=sorted(FACTORIES))
def model(request: pytest.FixtureRequest) -> nn.Module:
    return FACTORIES[request.param]()


def _check_logits_equal(model: nn.Module) -> None:
    ids = torch.randint(3, len(WORDS), (5, 7), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = 2  # an end token, as a tokenizer writes it
    x = _pixels()
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=x).logits_per_image
    classifier = xvit.zero_shot(model, text_features=_text_features(model, input_ids=ids))
    logits = classifier(x)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits, expected, **TOL)


def test_logits_equal_the_models_logits_per_image(model: nn.Module) -> None:
    _check_logits_equal(model)


@pytest.mark.transformers4
@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_logits_equal_logits_per_image_in_the_transformers4_layout(kind: str) -> None:
    _check_logits_equal(FACTORIES[kind]())


@pytest.mark.parametrize("as_processor", [False, True], ids=["tokenizer", "processor"])
def test_prompts_and_tokenizer_give_the_text_tower_features(
    model: nn.Module, as_processor: bool
) -> None:
    tokenizer = _tokenizer()
    siglip = type(model).__name__.startswith("Siglip")
    batch = tokenizer(PROMPTS, padding="max_length" if siglip else True, return_tensors="pt")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    x = _pixels()
    with torch.no_grad():
        expected = model(pixel_values=x, **inputs).logits_per_image
    given = tokenizer
    if as_processor:  # HF processors hold their tokenizer
        given = type("Processor", (), {"tokenizer": tokenizer})()
    classifier = xvit.zero_shot(model, PROMPTS, tokenizer=given)
    torch.testing.assert_close(classifier(x), expected, **TOL)
    assert classifier.class_names == tuple(PROMPTS)
    assert classifier.num_classes == len(PROMPTS)


def test_gradients_reach_the_pixels_and_the_shared_model(model: nn.Module) -> None:
    classifier = xvit.zero_shot(model, text_features=torch.randn(4, _dim(model)))
    x = _pixels().requires_grad_(True)
    first = next(classifier.parameters())
    grad_x, grad_w = torch.autograd.grad(classifier(x)[:, 1].sum(), [x, first])
    assert grad_x.abs().sum() > 0 and torch.isfinite(grad_w).all()


def _dim(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "projection_dim", None) or config.vision_config.hidden_size


def test_the_model_is_shared_and_left_as_it_was(model: nn.Module) -> None:
    model.train()  # a training-mode model: text features are still computed in eval mode
    model.text_model.encoder.eval()  # and mixed flags survive
    before = snapshot(model)
    classifier = xvit.zero_shot(model, PROMPTS, tokenizer=_tokenizer())
    classifier(_pixels())
    assert snapshot(model) == before
    assert classifier.training is True
    assert classifier.vision_model is model.vision_model
    assert classifier.logit_scale is model.logit_scale
    assert getattr(classifier, "logit_bias", None) is getattr(model, "logit_bias", None)
    owned = {id(p) for p in model.parameters()}
    assert all(id(p) in owned for p in classifier.parameters())  # shared, never copied
    text = {id(p) for p in model.text_model.parameters()}
    assert not any(id(p) in text for p in classifier.parameters())  # vision side only
    with torch.no_grad():
        model.logit_scale.add_(0.5)  # a change to the model is a change to the classifier
    assert classifier.logit_scale.item() == model.logit_scale.item()


def test_text_features_are_constants_of_the_classifier(model: nn.Module) -> None:
    features = torch.randn(3, _dim(model), requires_grad=True)
    with torch.inference_mode():
        frozen = torch.randn(3, _dim(model))
    classifier = xvit.zero_shot(model, text_features=features)
    assert not classifier.text_features.requires_grad
    torch.testing.assert_close(classifier.text_features.norm(dim=-1), torch.ones(3))
    assert classifier.class_names is None
    classifier.class_names = ["cat", "dog", "bird"]
    assert classifier.class_names == ("cat", "dog", "bird")
    xvit.zero_shot(model, text_features=frozen)(_pixels()).sum()  # inference tensors work


class _Fixed:
    """A stand-in open_clip tokenizer that returns the given token ids, one row per prompt."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return self.tokens[: len(prompts)]


def test_open_clip_models_equal_get_logits() -> None:
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (optional: pip install open_clip_torch)")
    import open_clip

    vision = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
    text = dict(context_length=8, vocab_size=len(WORDS), width=32, heads=2, layers=2)
    x = _pixels()
    for bias in (None, -2.5):  # CLIP, and a SigLIP-style model with a logit bias
        torch.manual_seed(0)
        model = open_clip.CLIP(16, vision, text, init_logit_bias=bias).eval()
        tokens = torch.randint(3, len(WORDS), (4, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model.get_logits(x, tokens)[0]
            features = model.encode_text(tokens)
        classifier = xvit.zero_shot(model, text_features=features)
        assert classifier.visual is model.visual
        torch.testing.assert_close(classifier(x), expected, **TOL)
        by_prompts = xvit.zero_shot(model, ["a", "b", "c", "d"], tokenizer=_Fixed(tokens))
        torch.testing.assert_close(by_prompts(x), expected, **TOL)


# --- errors ------------------------------------------------------------------------------
def test_neither_or_both_of_prompts_and_text_features_is_an_error(model: nn.Module) -> None:
    features = torch.randn(2, _dim(model))
    with pytest.raises(xvit.ParameterError, match=r"prompts=.*text_features="):
        xvit.zero_shot(model)
    with pytest.raises(xvit.ParameterError, match="not both"):
        xvit.zero_shot(model, PROMPTS, text_features=features, tokenizer=_tokenizer())
    with pytest.raises(xvit.ParameterError, match="tokenizer="):
        xvit.zero_shot(model, PROMPTS)
    with pytest.raises(xvit.ParameterError, match="only with prompts"):
        xvit.zero_shot(model, text_features=features, tokenizer=_tokenizer())


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (lambda d: torch.randn(2, d + 1), r"have \d+ values per prompt.*get_text_features"),
        (lambda d: torch.randn(d), r"shape \(prompts, dim\).*features\[None\]"),
        (lambda d: torch.randn(0, d), "at least one prompt"),
        (lambda d: torch.zeros(2, d), "all-zero row"),
        (lambda d: torch.ones(2, d, dtype=torch.long), "floating-point"),
        (lambda d: [[0.0] * d], "floating-point"),
    ],
    ids=["dimension", "1-d", "empty", "zero-row", "integer", "list"],
)
def test_bad_text_features_name_the_fix(model: nn.Module, features, match: str) -> None:
    with pytest.raises(xvit.InvalidInputError, match=match):
        xvit.zero_shot(model, text_features=features(_dim(model)))


@pytest.mark.parametrize("prompts", ["a photo of a cat", [], ["cat", 3], ["cat", ""]])
def test_bad_prompts_are_errors(model: nn.Module, prompts) -> None:
    with pytest.raises(xvit.InvalidInputError, match="prompts must be"):
        xvit.zero_shot(model, prompts, tokenizer=_tokenizer())


def test_class_names_must_match_the_classes(model: nn.Module) -> None:
    classifier = xvit.zero_shot(model, text_features=torch.randn(2, _dim(model)))
    with pytest.raises(xvit.InvalidInputError, match="3 class names for 2 classes"):
        classifier.class_names = ["a", "b", "c"]


def test_a_vision_tower_alone_is_refused_with_the_model_to_load(model: nn.Module) -> None:
    with pytest.raises(xvit.UnsupportedModelError, match=r"full image-text model.*from_pretrained"):
        xvit.zero_shot(model.vision_model, text_features=torch.randn(2, _dim(model)))


@pytest.mark.parametrize("other", [nn.Linear(4, 2), "not a model"], ids=["linear", "string"])
def test_other_objects_are_unsupported(other: object) -> None:
    with pytest.raises(xvit.UnsupportedModelError, match=r"CLIPModel, .*SiglipModel"):
        xvit.zero_shot(other, text_features=torch.randn(2, 4))  # type: ignore[arg-type]
    assert issubclass(ZeroShotClassifier, nn.Module)
