"""Exceptions that describe a problem with the user's input.

Every ``PrunekitError`` message is written to be read on its own: it names what was wrong
(a model name, a file, a shape) and how to fix it. The CLI prints it as a single line on
stderr and exits with status 1; other exceptions are treated as bugs in prunekit.
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error caused by bad input rather than by a bug in prunekit."""


class ModelSourceError(PrunekitError):
    """A model could not be resolved or built (unknown name, failed import, missing file)."""


class ModelForwardError(PrunekitError):
    """The model's forward pass failed on the example inputs (usually a wrong input shape)."""


class InputSpecError(PrunekitError):
    """An input specification (``--input-shape``, ``--batch-sizes``, ...) could not be parsed."""


class DataError(PrunekitError):
    """A dataset is missing, incomplete or corrupt."""


class BackendError(PrunekitError):
    """A runtime backend (ONNX Runtime, torch.compile, CUDA) is unavailable or disagrees with eager."""


class DeploymentError(PrunekitError):
    """A model cannot be deployed as asked (a budget too small, an unsupported layer, no C compiler)."""


class UntrustedCodeError(ModelSourceError):
    """Loading would run code outside prunekit's allowlist, and the user did not trust it."""


class OutputPathError(PrunekitError):
    """An output path that cannot or must not be written (see ``prunekit._outputs``)."""


class InvalidArgumentError(PrunekitError, TypeError):
    """A Python API call with an argument of the wrong type; the message says what to pass."""


class InvalidValueError(PrunekitError, ValueError):
    """A Python API call with an argument of the right type but an impossible value."""
