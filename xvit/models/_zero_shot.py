"""Zero-shot classifiers: an image-text model's vision side, with text prompts as classes.

:func:`zero_shot` turns a CLIP-style model (HuggingFace ``CLIPModel`` or ``SiglipModel``, an
open_clip ``CLIP`` or ``CustomTextCLIP``) into a ``torch.nn.Module`` that maps pixel values to
one logit per prompt: the model's own scaled image-text similarity, exactly as its
``logits_per_image`` (HF) or ``get_logits`` (open_clip) computes it. The text side is computed
once, when the classifier is made, so that every explanation method can treat the result as
an ordinary image classifier whose classes are the prompts.

The model's family is recognised by its type, looked up in the modules the user has already
imported (``sys.modules``): nothing here imports transformers or open_clip to check a model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._errors import InvalidInputError, ParameterError, UnsupportedModelError

__all__ = ["ZeroShotClassifier", "zero_shot"]


def _is_instance(model: object, module_name: str, class_names: Sequence[str]) -> bool:
    """Whether ``model`` is an instance of one of these classes of an imported module."""
    module = sys.modules.get(module_name)
    classes = tuple(getattr(module, name, None) for name in class_names)
    return any(isinstance(cls, type) and isinstance(model, cls) for cls in classes)


def _pooled(output: Any) -> torch.Tensor:
    """The pooled image embedding of an HF vision tower's output (object or tuple)."""
    pooled = getattr(output, "pooler_output", None)
    return output[1] if pooled is None else pooled


def _hf_clip_image(classifier: ZeroShotClassifier, pixel_values: torch.Tensor) -> torch.Tensor:
    pooled = _pooled(classifier.vision_model(pixel_values=pixel_values))
    return classifier.visual_projection(pooled)


def _hf_siglip_image(classifier: ZeroShotClassifier, pixel_values: torch.Tensor) -> torch.Tensor:
    return _pooled(classifier.vision_model(pixel_values=pixel_values))


def _open_clip_image(classifier: ZeroShotClassifier, pixel_values: torch.Tensor) -> torch.Tensor:
    return classifier.visual(pixel_values)


def _hf_text(padding: bool | str) -> Callable[[Any, Any, list[str]], torch.Tensor]:
    """Text features of an HF model from its tokenizer (or processor), padded as it was
    trained (SigLIP: ``"max_length"``)."""

    def text(model: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
        tokenize = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
        batch = tokenize(prompts, padding=padding, return_tensors="pt")
        device = model.logit_scale.device
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch}
        out = model.get_text_features(**inputs)
        return out if isinstance(out, torch.Tensor) else _pooled(out)  # transformers 4.x / 5.x

    return text


def _open_clip_text(model: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    tokens = tokenizer(prompts)
    return model.encode_text(tokens.to(model.logit_scale.device))


def _hf_clip_dim(model: Any) -> int | None:
    return int(model.visual_projection.out_features)


def _hf_siglip_dim(model: Any) -> int | None:
    return int(model.config.vision_config.hidden_size)


def _open_clip_dim(model: Any) -> int | None:
    dim = getattr(model.visual, "output_dim", None)
    if dim is not None:
        return int(dim)
    proj = getattr(model, "text_projection", None)  # the text side projects to the same width
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    return int(proj.shape[-1]) if isinstance(proj, torch.Tensor) else None


@dataclass(frozen=True)
class _Family:
    """How one kind of image-text model is read: a declaration, not a subclass."""

    name: str
    module: str  #: where the model classes live
    classes: tuple[str, ...]  #: the full image-text models of that module
    towers: tuple[str, ...]  #: vision-side submodules shared (by reference) with the classifier
    image: Callable[[ZeroShotClassifier, torch.Tensor], torch.Tensor]  #: unnormalised embedding
    text: Callable[[Any, Any, list[str]], torch.Tensor]  #: (model, tokenizer, prompts) -> P x D
    dim: Callable[[Any], int | None]  #: width D of the image embedding, when the model says
    encode_text: str  #: how a user computes text features with this model
    vision_only: tuple[str, ...] = ()  #: its vision towers, refused with a pointer to the above


#: The families zero_shot reads, in lookup order.
FAMILIES: tuple[_Family, ...] = (
    _Family(
        name="transformers CLIPModel",
        module="transformers.models.clip.modeling_clip",
        classes=("CLIPModel",),
        towers=("vision_model", "visual_projection"),
        image=_hf_clip_image,
        text=_hf_text(padding=True),
        dim=_hf_clip_dim,
        encode_text="model.get_text_features(...)",
        # CLIPVisionTransformer: the model's own vision_model in transformers 4.x
        vision_only=("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPVisionTransformer"),
    ),
    _Family(
        name="transformers SiglipModel",
        module="transformers.models.siglip.modeling_siglip",
        classes=("SiglipModel",),
        towers=("vision_model",),
        image=_hf_siglip_image,
        text=_hf_text(padding="max_length"),
        dim=_hf_siglip_dim,
        encode_text="model.get_text_features(...)",
        vision_only=("SiglipVisionModel", "SiglipVisionTransformer"),  # the latter: 4.x
    ),
    _Family(
        name="open_clip CLIP",
        module="open_clip.model",
        classes=("CLIP", "CustomTextCLIP"),
        towers=("visual",),
        image=_open_clip_image,
        text=_open_clip_text,
        dim=_open_clip_dim,
        encode_text="model.encode_text(tokenizer(prompts))",
    ),
)
_OPEN_CLIP_TOWERS = ("open_clip.transformer", ("VisionTransformer",))


def _family_of(model: object) -> _Family:
    for family in FAMILIES:
        if _is_instance(model, family.module, family.classes):
            return family
    full_models = ", ".join(f.name for f in FAMILIES)
    for family in FAMILIES:
        if _is_instance(model, family.module, family.vision_only):
            raise UnsupportedModelError(
                f"zero_shot needs the full image-text model, not its vision tower "
                f"{type(model).__name__}: the logit scale and the projections live in the full "
                f"model; load {family.classes[0]} (for example {family.classes[0]}"
                f".from_pretrained(...)) and pass that"
            )
    if _is_instance(model, *_OPEN_CLIP_TOWERS):
        raise UnsupportedModelError(
            "zero_shot needs the full open_clip model (open_clip.create_model(...)), not its "
            "visual tower: the logit scale lives in the full model"
        )
    raise UnsupportedModelError(
        f"zero_shot cannot read a {type(model).__module__}.{type(model).__qualname__}: it "
        f"supports {full_models} (open_clip when installed); for a classifier, pass the model "
        f"to xvit.explain directly"
    )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode for the block, each flag restored after it."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_prompts(prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InvalidInputError(
            f"prompts must be a list of strings, one per class, got {type(prompts).__name__}; "
            f"for one prompt write [prompt]"
        )
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise InvalidInputError(
            f"prompts must be a non-empty list of non-empty strings, got {list(prompts)!r}"
        )
    return list(prompts)


def _check_features(features: object, family: _Family, model: Any) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        got = features.dtype if isinstance(features, torch.Tensor) else type(features).__name__
        raise InvalidInputError(
            f"text_features must be a floating-point tensor of shape (prompts, dim), got {got}"
        )
    if features.ndim != 2 or features.shape[0] == 0:
        raise InvalidInputError(
            f"text_features must have shape (prompts, dim) with at least one prompt, got "
            f"{tuple(features.shape)}; for one prompt use features[None]"
        )
    dim = family.dim(model)
    if dim is not None and features.shape[1] != dim:
        raise InvalidInputError(
            f"text_features have {features.shape[1]} values per prompt, but the model's image "
            f"embeddings have {dim}; compute them with the same model's text tower and "
            f"projection: {family.encode_text}"
        )
    features = features.detach()
    if not torch.isfinite(features).all() or not (features.norm(dim=-1) > 0).all():
        raise InvalidInputError(
            "text_features must be finite with no all-zero row (each row is normalised)"
        )
    return features


class ZeroShotClassifier(nn.Module):
    """An image-text model's vision side as a classifier whose classes are text prompts.

    Made by :func:`zero_shot`. Its forward maps pixel values (B, C, H, W) to logits (B, P), one
    per prompt: ``logit_scale.exp() * cos(image embedding, text embedding)`` plus
    ``logit_bias`` for SigLIP-style models, the model's own ``logits_per_image``.

    The vision-side modules of the model are submodules here under their names in the model
    (``vision_model`` and ``visual_projection`` for HF CLIP, ``vision_model`` for HF SigLIP,
    ``visual`` for open_clip), and ``logit_scale``/``logit_bias`` are the model's own
    parameters: shared by reference, never copied, so the classifier and the model change
    together. The text side is not a submodule; its normalised features are the buffer
    ``text_features`` (P, D), fixed when the classifier was made.

    Attributes:
        text_features: The normalised text embeddings, one row per class.
        class_names: The prompts, when the classifier was made from prompts (settable: one
            name per class, or None).

    Example:
        >>> import torch, xvit
        >>> from transformers import CLIPConfig, CLIPModel
        >>> tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...             num_attention_heads=2)
        >>> model = CLIPModel(CLIPConfig(text_config=tiny, projection_dim=8,
        ...                              vision_config=dict(tiny, image_size=16, patch_size=8)))
        >>> classifier = xvit.zero_shot(model, text_features=torch.randn(3, 8))
        >>> classifier.num_classes, classifier.vision_model is model.vision_model
        (3, True)
    """

    text_features: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None
    vision_model: nn.Module  # HF models
    visual_projection: nn.Module  # HF CLIP
    visual: nn.Module  # open_clip

    def __init__(
        self,
        model: nn.Module,
        text_features: torch.Tensor,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        family = _family_of(model)
        features = _check_features(text_features, family, model)
        self._family = family
        for name in family.towers:
            self.add_module(name, getattr(model, name))
        for name in ("logit_scale", "logit_bias"):
            value = getattr(model, name, None)
            if isinstance(value, nn.Parameter) or value is None:
                self.register_parameter(name, value)
            else:
                self.register_buffer(name, value, persistent=False)
        scale = self.logit_scale
        features = features.to(device=scale.device, dtype=scale.dtype)
        self.register_buffer("text_features", features / features.norm(p=2, dim=-1, keepdim=True))
        self._class_names: tuple[str, ...] | None = None
        self.class_names = class_names
        self.training = model.training  # the flag only: the shared submodules keep theirs

    @property
    def num_classes(self) -> int:
        """Number of classes: one per prompt (row of ``text_features``)."""
        return int(self.text_features.shape[0])

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """One name per class (the prompts, by default), or None."""
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        if names is not None:
            names = tuple(_check_prompts(names))
            if len(names) != self.num_classes:
                raise InvalidInputError(
                    f"{len(names)} class names for {self.num_classes} classes (rows of "
                    f"text_features); give one name per class"
                )
        self._class_names = names

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (B, P): the model's scaled image-text similarity to each prompt."""
        image = self._family.image(self, pixel_values)
        if image.shape[-1] != self.text_features.shape[-1]:
            raise InvalidInputError(
                f"the image embeddings have {image.shape[-1]} values but text_features have "
                f"{self.text_features.shape[-1]}; compute text_features with this model"
            )
        image = image / image.norm(p=2, dim=-1, keepdim=True)
        text = self.text_features.to(device=image.device, dtype=image.dtype)
        logits = self.logit_scale.exp() * (image @ text.T)
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits

    def extra_repr(self) -> str:
        return f"family={self._family.name!r}, classes={self.num_classes}"


def zero_shot(
    model: nn.Module,
    prompts: Sequence[str] | None = None,
    *,
    text_features: torch.Tensor | None = None,
    tokenizer: Any = None,
) -> ZeroShotClassifier:
    """A classifier over text prompts from a CLIP-style image-text model, to explain.

    The returned module's forward on pixel values gives the model's own scaled image-text
    logits with the prompts as classes: equal to ``logits_per_image`` of a HuggingFace
    ``CLIPModel`` (``logit_scale.exp() * cosine``) or ``SiglipModel`` (the same plus
    ``logit_bias``), and to open_clip's ``get_logits`` (``logit_scale.exp() * cosine``, plus
    ``logit_bias`` for its SigLIP models). Every xvit method explains it like a classifier;
    a class name target is a prompt. SigLIP's logits are independent sigmoid scores: a method
    that scores with a softmax over classes compares the prompts with each other.

    The text side runs once, here, under ``torch.no_grad`` with the model in eval mode (its
    modes are restored): the text features are constants of the classifier. The vision side is
    shared with ``model`` by reference (see :class:`ZeroShotClassifier`); nothing is copied
    and no hook is left on the model.

    ``zero_shot`` needs the full image-text model, not its vision tower alone (for example
    ``CLIPVisionModel``): the logit scale, the visual projection and (HF SigLIP) the logit bias
    live in the full model.

    Args:
        model: A transformers ``CLIPModel`` or ``SiglipModel``, or an open_clip ``CLIP`` or
            ``CustomTextCLIP`` (when open_clip is installed).
        prompts: One text per class, encoded with ``tokenizer`` by the model's own text tower.
            Also the classifier's class names.
        text_features: Instead of ``prompts``: a (P, D) tensor of text embeddings, one row per
            class, as the model's text tower and projection produce them, before normalisation
            (HF: ``model.get_text_features(...)``; open_clip: ``model.encode_text(tokens)``).
            Already normalised rows work too. Works offline, with no tokenizer.
        tokenizer: With ``prompts``: for an HF model its tokenizer or processor (for example
            ``AutoProcessor.from_pretrained(name)``), called with ``padding=True`` (CLIP) or
            ``padding="max_length"`` (SigLIP, as it was trained); for open_clip the tokenizer
            of ``open_clip.get_tokenizer(name)``.

    Returns:
        The classifier, a ``torch.nn.Module`` mapping pixel values (B, C, H, W) to (B, P) logits.

    Raises:
        UnsupportedModelError: ``model`` is not a supported image-text model (a vision tower
            alone is refused with the class to load instead).
        ParameterError: Neither or both of ``prompts`` and ``text_features``, or ``prompts``
            without a ``tokenizer`` (or a ``tokenizer`` without ``prompts``).
        InvalidInputError: ``prompts`` is not a list of strings, or ``text_features`` is not a
            (P, D) float tensor with D the width of the model's image embeddings.

    Example:
        >>> import torch, xvit
        >>> from transformers import SiglipConfig, SiglipModel
        >>> tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...             num_attention_heads=2)
        >>> model = SiglipModel(SiglipConfig(
        ...     text_config=tiny, vision_config=dict(tiny, image_size=16, patch_size=8))).eval()
        >>> classifier = xvit.zero_shot(model, text_features=torch.randn(3, 16))
        >>> classifier(torch.randn(2, 3, 16, 16)).shape  # two images, three prompts
        torch.Size([2, 3])
    """
    if prompts is None and text_features is None:
        raise ParameterError(
            "zero_shot needs the classes: give prompts=[...] with tokenizer=..., or "
            "text_features= (a prompts x dim tensor of the model's text embeddings)"
        )
    if prompts is not None and text_features is not None:
        raise ParameterError(
            "give either prompts (with tokenizer) or text_features, not both; to name the "
            "classes of text_features, set classifier.class_names afterwards"
        )
    if prompts is not None and tokenizer is None:
        raise ParameterError(
            "prompts need the model's tokenizer: pass tokenizer= (an HF tokenizer or processor, "
            "or open_clip.get_tokenizer(name)), or pass text_features= instead of prompts"
        )
    if text_features is not None and tokenizer is not None:
        raise ParameterError("tokenizer is used only with prompts; with text_features leave it out")
    family = _family_of(model)
    if prompts is not None:
        prompts = _check_prompts(prompts)
        with torch.no_grad(), _eval_mode(model):
            text_features = family.text(model, tokenizer, prompts)
    assert text_features is not None
    return ZeroShotClassifier(model, text_features, class_names=prompts)


#: What every family of zero-shot classifiers declares the same way: the classifier's own
#: forward gives the logits, its prompts are the classes and their names.
CLASSIFIER_HEAD: dict[str, Any] = {
    "logits": lambda model, x: model(x),
    "num_classes": lambda model: int(model.num_classes),
    "class_names": lambda model, n: model.class_names,
}
