"""Load models by name: ``timm:<name>``, ``hf:<repo id>``, aliases, local checkpoints.

Real loading code stays for users (``pretrained=True``, ``from_pretrained``); when the hub
cannot be reached the error says so in one line and names an offline choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import InvalidInputError, ModelLoadError, UnknownNameError, UnsupportedModelError
from .._registry import Registry
from ._labels import timm_class_names
from ._lookup import get_adapter, supported_models
from ._preprocessing import Preprocessing, attach_preprocessing
from .convert import timm_to_hf

#: Model aliases: short name -> full model spec (``timm:...``, ``hf:...``, a file path).
model_aliases: Registry[str] = Registry("model alias")
model_aliases.register("vit", "hf:google/vit-base-patch16-224")
model_aliases.register("deit", "hf:facebook/deit-base-distilled-patch16-224")

#: Spec prefix: ``hf-twin:<spec>`` loads ``<spec>`` (a timm ViT/DeiT) and converts it to HF.
HF_TWIN = "hf-twin:"

OFFLINE_HINT = (
    "offline choices: a shipped model such as 'xvit:digits-vit', a local checkpoint path, or a "
    "model object you built yourself"
)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HuggingFace hub endpoint answers a TCP connection within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return False
        endpoint = getattr(constants, "ENDPOINT", "https://huggingface.co")
    except ImportError:
        return False
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _offline_unless_reachable() -> Iterator[None]:
    """Use only the local cache when the hub cannot be reached, instead of retrying for
    a minute: a cached model still loads, an uncached one fails at once."""
    if hub_reachable():
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_error(spec: str, exc: BaseException) -> ModelLoadError:
    if not hub_reachable():
        reason = "the model hub is unreachable and the model is not in the local cache"
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"the hub refused it ({type(exc).__name__}: {first})"
    return ModelLoadError(f"could not load {spec!r}: {reason}; {OFFLINE_HINT}")


def load_model(spec: str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model from a spec string and put it in eval mode on ``device``.

    Args:
        spec: ``timm:<name>`` (pretrained weights from the hub), ``hf:<repo id>``, an alias
            (``vit``, ``deit``, ``xvit:digits-vit``, ...), a directory saved with
            ``save_pretrained``, a ``.safetensors`` file written by :func:`save_checkpoint`,
            or ``hf-twin:<any of these>``: that timm model converted to HuggingFace.
        device: Where to put the model.

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: The model could not be loaded (unreachable hub, unreadable file).
        UnknownNameError: The spec is not a known form or alias.
        UnsupportedModelError: The architecture is not one xvit can explain. For
            ``timm:`` this is decided without the hub (the architecture is built on the meta
            device); for ``hf:`` from the repo's config, the one file fetched before the
            weights (the repo id alone does not tell the architecture).

    Example:
        >>> import xvit
        >>> model = xvit.load_model("xvit:digits-vit")  # shipped with xvit: no download
        >>> type(model).__name__, model.training
        ('VisionTransformer', False)
    """
    seen: set[str] = set()
    while spec in model_aliases and spec not in seen:
        seen.add(spec)
        spec = model_aliases.get(spec)
    if spec.startswith(HF_TWIN):
        return timm_to_hf(load_model(spec[len(HF_TWIN) :])).to(device).eval()
    if spec.startswith("timm:"):
        model = _load_timm(spec[5:])
    elif spec.startswith("hf:"):
        model = _load_hf(spec[3:])
    elif Path(spec).exists():
        model = _load_path(Path(spec))
    elif spec.endswith(".safetensors"):
        raise ModelLoadError(f"checkpoint file not found: {spec}; check the path")
    else:
        known = ", ".join(model_aliases.names())
        raise UnknownNameError(
            f"unknown model {spec!r}: use timm:<name>, hf:<repo id>, a local checkpoint path, "
            f"or one of the aliases: {known}"
        )
    return model.to(device).eval()


def _refuse_unsupported(spec: str, build: Callable[[], nn.Module]) -> None:
    """Raise :class:`~xvit.UnsupportedModelError` before any weights are downloaded when the
    architecture ``build`` makes is not one xvit can explain.

    ``build`` runs on the meta device: parameters get shapes but no memory and no values, so
    this costs a fraction of a second even for a large model. When the architecture cannot
    be built that way, nothing is decided here (the adapter check after loading still runs).
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except UnsupportedModelError:
        raise
    except Exception:
        return
    try:
        get_adapter(skeleton)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{spec} (its weights were not downloaded): {exc}") from None


def _load_timm(name: str) -> nn.Module:
    import timm

    if not timm.list_models(name) and not timm.list_models(name.split(".")[0]):
        raise UnknownNameError(f"timm has no model named {name!r}; see timm.list_models('vit_*')")
    _refuse_unsupported(f"timm:{name}", lambda: timm.create_model(name, pretrained=False))
    try:
        with _offline_unless_reachable():
            return timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise _hub_error(f"timm:{name}", exc) from None


def _load_hf(repo: str) -> nn.Module:
    """An HF image classifier from the hub. The architecture is only known from the repo's
    config, so that small JSON file is fetched first; the weights only once the architecture
    is one xvit supports."""
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        with _offline_unless_reachable():
            config = AutoConfig.from_pretrained(repo)
    except Exception as exc:
        raise _hub_error(f"hf:{repo}", exc) from None
    _refuse_unsupported(f"hf:{repo}", lambda: _hf_image_classifier(config, f"hf:{repo}"))
    try:
        with _offline_unless_reachable():
            model = AutoModelForImageClassification.from_pretrained(repo, config=config)
    except Exception as exc:
        raise _hub_error(f"hf:{repo}", exc) from None
    prep = _hf_processor_preprocessing(repo, model)
    if prep is not None:
        attach_preprocessing(model, prep)
    return model


def _hf_image_classifier(config: Any, spec: str) -> nn.Module:
    """The model ``AutoModelForImageClassification`` builds for ``config``, without weights."""
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    try:
        classes: Any = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        raise UnsupportedModelError(
            f"{spec} is a {getattr(config, 'model_type', type(config).__name__)} model, not an "
            f"image classifier (its weights were not downloaded); xvit supports "
            f"{supported_models()}"
        ) from None
    if isinstance(classes, (list, tuple)):  # pick the one the config names, as transformers does
        named = [c for c in classes if c.__name__ in (getattr(config, "architectures", None) or [])]
        classes = (named or list(classes))[0]
    return classes(config)


def _hf_processor_preprocessing(repo: str, model: nn.Module) -> Preprocessing | None:
    """Read the image processor's config (size, crop, mean, std, resample) when present."""
    try:
        from transformers import AutoImageProcessor

        with _offline_unless_reachable():
            proc = AutoImageProcessor.from_pretrained(repo)
    except Exception:
        return None
    return preprocessing_from_hf_processor(proc)


def preprocessing_from_hf_processor(proc: Any) -> Preprocessing:
    """Translate an HF image processor's settings into :class:`Preprocessing`.

    Example:
        >>> from transformers import ViTImageProcessor
        >>> processor = ViTImageProcessor(size={"height": 64, "width": 64})
        >>> preprocessing_from_hf_processor(processor).size
        (64, 64)
    """
    crop = getattr(proc, "crop_size", None)
    size = getattr(proc, "size", None) or {}

    def hw(d: Any) -> tuple[int, int] | None:
        # a dict in transformers 4.x, a SizeDict (not a dict, same .get) in 5.x
        get = getattr(d, "get", None)
        if get is None:
            return None
        if get("height") is not None and get("width") is not None:
            return int(get("height")), int(get("width"))
        if get("shortest_edge") is not None:
            return int(get("shortest_edge")), int(get("shortest_edge"))
        return None

    resample = getattr(proc, "resample", 2)
    names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
    interp = names.get(int(getattr(resample, "value", resample)), "bilinear")
    mean = tuple(float(m) for m in getattr(proc, "image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(s) for s in getattr(proc, "image_std", (0.5, 0.5, 0.5)))
    resize_hw = hw(size)
    if getattr(proc, "do_center_crop", False) and crop is not None and hw(crop) is not None:
        target = hw(crop)
        assert target is not None
        pct = target[0] / resize_hw[0] if resize_hw else 1.0
        return Preprocessing(target, mean, std, interp, crop_pct=pct)
    return Preprocessing(resize_hw or (224, 224), mean, std, interp, squash=True)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    timm_name: str,
    model_kwargs: dict[str, Any],
    preprocessing: Preprocessing,
    extra: dict[str, str] | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Save a timm model as ``.safetensors`` with what is needed to rebuild it.

    Args:
        model: The timm model.
        path: The ``.safetensors`` file to write.
        timm_name: The timm architecture, as for ``timm.create_model``.
        model_kwargs: The keyword arguments that build ``model`` with ``timm.create_model``.
        preprocessing: How raw images become the model's inputs.
        extra: More metadata to store (strings).
        class_names: One name per class; default: the names the model carries
            (``pretrained_cfg["label_names"]`` or timm's ImageNet names), if any.

    Example:
        >>> import tempfile, timm, torch, xvit
        >>> kwargs = dict(num_classes=3, depth=1, img_size=32, patch_size=8)
        >>> m = timm.create_model("vit_tiny_patch16_224", **kwargs)
        >>> path = tempfile.mkdtemp() + "/tiny.safetensors"
        >>> xvit.save_checkpoint(m, path, timm_name="vit_tiny_patch16_224", model_kwargs=kwargs,
        ...                      preprocessing=xvit.Preprocessing(size=(32, 32)))
        >>> x = torch.randn(1, 3, 32, 32)
        >>> torch.equal(xvit.load_checkpoint(path).eval()(x), m.eval()(x))
        True
    """
    from safetensors.torch import save_file

    meta = {
        "xvit_format": "timm",
        "timm_name": timm_name,
        "model_kwargs": json.dumps(model_kwargs),
        "preprocessing": json.dumps(asdict(preprocessing)),
        **(extra or {}),
    }
    num_classes = int(getattr(model, "num_classes", 0))
    names = timm_class_names(model, num_classes) if class_names is None else list(class_names)
    if names is not None:
        if len(names) != num_classes:
            raise InvalidInputError(
                f"class_names has {len(names)} names for a model with {num_classes} classes; "
                f"give one per class"
            )
        meta["label_names"] = json.dumps([str(n) for n in names])
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def _load_path(path: Path) -> nn.Module:
    if path.is_dir():
        from transformers import AutoModelForImageClassification

        try:
            model = AutoModelForImageClassification.from_pretrained(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the HF model saved in {path}: {_one_line(exc)}"
            ) from None
        prep = _hf_processor_preprocessing(str(path), model)
        if prep is not None:
            attach_preprocessing(model, prep)
        return model
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"cannot load {path}: xvit reads .safetensors files written by "
            f"xvit.save_checkpoint and folders written by save_pretrained (it never unpickles "
            f"files); convert a .pth with timm and save it with xvit.save_checkpoint"
        )
    return load_checkpoint(path)


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a timm model saved by :func:`save_checkpoint` (safetensors, no pickle).

    Example:
        >>> import xvit
        >>> m = load_checkpoint(xvit.model_aliases.get("xvit:digits-vit"))  # the shipped file
        >>> xvit.get_adapter(m).preprocessing.size
        (64, 64)
    """
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"{path} is not a readable safetensors file: {_one_line(exc)}"
        ) from None
    if meta.get("xvit_format") != "timm":
        raise ModelLoadError(
            f"{path} has no xvit metadata (timm_name, model_kwargs); save it with "
            f"xvit.save_checkpoint"
        )
    try:  # metadata and weights that do not fit together: a damaged or foreign file
        kwargs = json.loads(meta["model_kwargs"])
        model = timm.create_model(meta["timm_name"], pretrained=False, **kwargs)
        model.load_state_dict(state)
        prep = json.loads(meta["preprocessing"])
        prep["size"] = tuple(prep["size"])
        prep["mean"] = tuple(prep["mean"])
        prep["std"] = tuple(prep["std"])
        preprocessing = Preprocessing(**prep)
        labels = json.loads(meta["label_names"]) if "label_names" in meta else None
    except Exception as exc:
        raise ModelLoadError(
            f"{path} has xvit metadata, but the model cannot be rebuilt from it "
            f"({type(exc).__name__}: {_one_line(exc)}); the file is damaged or incomplete: "
            f"save the model again with xvit.save_checkpoint"
        ) from None
    attach_preprocessing(model, preprocessing)
    cfg = {**getattr(model, "pretrained_cfg", {}), **meta, "num_classes": model.num_classes}
    if labels is not None:
        cfg["label_names"] = tuple(str(n) for n in labels)
    setattr(model, "pretrained_cfg", cfg)  # noqa: B010
    return model


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
