"""Exception types raised by xvit.

Every error a user can cause derives from :class:`XvitError`, so one ``except XvitError``
catches them all. Each also derives from the matching built-in (``ValueError``,
``TypeError``, ``KeyError``) so that generic handlers keep working.
"""

from __future__ import annotations


class XvitError(Exception):
    """Base class of every error raised by xvit on bad input or misuse.

    Example:
        >>> import xvit
        >>> try:
        ...     xvit.explain("no-such-method", None, None)
        ... except xvit.XvitError as exc:  # catches every error xvit raises on misuse
        ...     print(type(exc).__name__)
        UnknownNameError
    """


class UnsupportedModelError(XvitError, TypeError):
    """The object given as a model is not a Vision Transformer that xvit can explain.

    Example:
        >>> import torch, xvit
        >>> try:
        ...     xvit.get_adapter(torch.nn.Linear(4, 2))
        ... except xvit.UnsupportedModelError as exc:
        ...     print(str(exc).split(":")[0])
        xvit cannot explain a torch.nn.modules.linear.Linear
    """


class InvalidInputError(XvitError, ValueError):
    """An image, tensor or target cannot be used as given.

    Example:
        >>> import torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> try:
        ...     xvit.explain("attention", model, torch.randn(1, 3, 64, 64), target=10)
        ... except xvit.InvalidInputError as exc:
        ...     print(exc)
        target 10 is out of range: the model has 10 classes (0 .. 9)
    """


class ParameterError(XvitError, ValueError):
    """A method, metric or runner parameter is unknown or out of range.

    Example:
        >>> import xvit
        >>> try:
        ...     xvit.make_explainer("gradmask", masks_per_layer=0)
        ... except xvit.ParameterError as exc:
        ...     print(exc)
        gradmask: masks_per_layer must be a positive integer, got 0
    """


class UnknownNameError(XvitError, KeyError):
    """A registry lookup (method, metric, model alias) found no such name.

    Example:
        >>> import xvit
        >>> try:
        ...     xvit.get_method("gradmsk")
        ... except xvit.UnknownNameError as exc:
        ...     print(str(exc).split(".")[0])
        unknown method 'gradmsk'
    """

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class CaptureError(XvitError, RuntimeError):
    """A hook captured nothing: the model's structure is not what its adapter expects.

    Example:
        >>> import torch, xvit
        >>> model = xvit.load_model("xvit:digits-vit")
        >>> block = model.blocks[2]
        >>> block.forward = lambda x, *a, **k: x + block.mlp(block.norm2(x))  # skips its attention
        >>> try:
        ...     xvit.explain("gradmask", model, torch.randn(1, 3, 64, 64))
        ... except xvit.CaptureError as exc:
        ...     print(type(exc).__name__, "block 2" in str(exc))
        CaptureError True
    """


class ModelLoadError(XvitError, RuntimeError):
    """A model could not be loaded (unknown name, unreachable hub, unreadable checkpoint).

    Example:
        >>> import xvit
        >>> try:
        ...     xvit.load_model("missing/model.safetensors")
        ... except xvit.ModelLoadError as exc:
        ...     print(exc)
        checkpoint file not found: missing/model.safetensors; check the path
    """


class ModelOutputError(XvitError, RuntimeError):
    """The model returned non-finite values or raised while being explained.

    Example:
        >>> import timm, torch, xvit
        >>> m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1, img_size=32,
        ...                       patch_size=8)
        >>> _ = torch.nn.init.constant_(m.head.bias, float("nan"))
        >>> try:
        ...     xvit.explain("attention", m, torch.randn(1, 3, 32, 32))
        ... except xvit.ModelOutputError as exc:
        ...     print(type(exc).__name__)
        ModelOutputError
    """


class MissingDependencyError(XvitError, ImportError):
    """A method needs an optional package that is not installed; the message names the
    install command (``pip install xvit[extra]``).

    Example:
        >>> import xvit
        >>> issubclass(xvit.MissingDependencyError, ImportError)
        True
    """
