"""Error types of the codec.

Every problem with a bitstream (truncated, corrupted, hostile) surfaces as
:class:`BitstreamError`; every bad argument as :class:`CodecConfigError`.
Both subclass ``ValueError`` so callers can catch them in one place.
"""

from __future__ import annotations


class CodecError(ValueError):
    """Base class of all errors the codec raises on purpose."""


class BitstreamError(CodecError):
    """A ``.gsv`` file or GOP payload is truncated, corrupted or not ours.

    The message says what was wrong and where (byte offset when known).
    """


class DecodeLimitError(BitstreamError):
    """A file asks for more decoding work than its size or the memory budget allows
    (:class:`codec.bitstream.DecodeLimits`): a hostile or absurd file, not a damaged one."""


class CodecConfigError(CodecError):
    """A configuration value is out of range; the message names it and the valid range."""


class VideoInputError(CodecError):
    """An input video cannot be read (not a video, no video stream, zero frames, corrupt)."""
