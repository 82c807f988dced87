"""Exception classes of minigpt_med.

Every error raised by the engine is a :class:`MiniGptMedError` carrying the engine's message
(what went wrong and what to do). The native module maps each engine error kind to one of these
classes in one place (``minigpt-med-py/src/errors.rs``). Where a builtin fits, the class also
derives from it, so ``except ValueError`` catches a bad option or image.
"""

from __future__ import annotations

__all__ = [
    "MiniGptMedError",
    "ModelFileError",
    "ImageError",
    "OptionsError",
    "ContextOverflowError",
    "TokenizerError",
    "UnsupportedError",
    "CancelledError",
    "InternalError",
]


class MiniGptMedError(Exception):
    """Base class of every minigpt_med error."""


class ModelFileError(MiniGptMedError, OSError):
    """A model file is missing, unreadable, malformed, or does not match the others."""


class ImageError(MiniGptMedError, ValueError):
    """The input image cannot be read or decoded, or has an unsupported layout."""


class OptionsError(MiniGptMedError, ValueError):
    """An invalid task argument or decoding/loading option."""


class ContextOverflowError(OptionsError):
    """The prompt plus ``max_new_tokens`` do not fit in the model's context."""


class TokenizerError(MiniGptMedError):
    """The tokenizer failed."""


class UnsupportedError(MiniGptMedError):
    """The requested device or dtype is not available in this build."""


class CancelledError(MiniGptMedError):
    """A generation was cancelled by the caller."""


class InternalError(MiniGptMedError):
    """An internal failure of the engine (a bug: please report it)."""
