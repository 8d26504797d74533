"""Exception types raised by xvit.

Every error a user can cause derives from :class:`XvitError`, so one ``except XvitError``
catches them all. Each also derives from the matching built-in (``ValueError``,
``TypeError``, ``KeyError``) so that generic handlers keep working.
"""

from __future__ import annotations


class XvitError(Exception):
    """Base class of every error raised by xvit on bad input or misuse."""


class UnsupportedModelError(XvitError, TypeError):
    """The object given as a model is not a Vision Transformer that xvit can explain."""


class InvalidInputError(XvitError, ValueError):
    """An image, tensor or target cannot be used as given."""


class ParameterError(XvitError, ValueError):
    """A method, metric or runner parameter is unknown or out of range."""


class UnknownNameError(XvitError, KeyError):
    """A registry lookup (method, metric, model alias) found no such name."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class CaptureError(XvitError, RuntimeError):
    """A hook captured nothing: the model's structure is not what its adapter expects."""


class ModelLoadError(XvitError, RuntimeError):
    """A model could not be loaded (unknown name, unreachable hub, unreadable checkpoint)."""


class ModelOutputError(XvitError, RuntimeError):
    """The model returned non-finite values or raised while being explained."""
