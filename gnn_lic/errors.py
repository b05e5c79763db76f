"""The package's exceptions: model checkpoints and shipped weights, the file codec, image I/O.

Every *expected* failure (bad input file, corrupt stream, wrong model, existing output,
missing weights, unusable checkpoint) is a :class:`CodecError`, so callers (the command
line in particular) can report it in one line without a traceback.  This module imports
nothing, so every layer (``models`` as well as ``codec``) raises the same classes.
"""

from __future__ import annotations

__all__ = [
    "CodecError",
    "ImageReadError",
    "CorruptStreamError",
    "ModelMismatchError",
    "OutputExistsError",
    "NoPretrainedWeightsError",
    "CheckpointError",
    "MemoryBudgetError",
]


class CodecError(Exception):
    """Base class of every expected error of the codec, checkpoint I/O and command line."""


class ImageReadError(CodecError):
    """The input file is missing, unreadable or not an image."""


class CorruptStreamError(CodecError):
    """The compressed stream is not ours, truncated, corrupt or has trailing garbage."""


class ModelMismatchError(CodecError):
    """The stream was encoded with another model, configuration or set of weights."""


class OutputExistsError(CodecError):
    """The output file exists and overwriting was not requested (``force=False``)."""


class NoPretrainedWeightsError(CodecError):
    """No trained weights are shipped for the requested model name, size and quality."""


class CheckpointError(CodecError):
    """A checkpoint file is missing, not a torch file, not ours, or does not fit its model."""


class MemoryBudgetError(CodecError):
    """An image needs more memory than the budget allows, or the budget is not a size."""
