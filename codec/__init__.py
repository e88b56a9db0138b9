"""splatpack's 2D Gaussian splatting video codec, usable as a plain library.

    from codec import encode_gop, decode_gop, CodecConfig
    payload = encode_gop(frames_u8_T_H_W_3, CodecConfig.preset("fast", quality=5))
    frames = decode_gop(payload)

Names are resolved lazily so ``import codec`` stays cheap and submodules can be
imported on their own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "encode_gop": "codec.gop",
    "encode_gop_report": "codec.gop",
    "decode_gop": "codec.gop",
    "CodecConfig": "codec.config",
    "FitConfig": "codec.config",
    "QuantConfig": "codec.config",
    "ContainerWriter": "codec.container",
    "ContainerReader": "codec.container",
    "StreamHeader": "codec.container",
    "encode_video": "codec.api",
    "decode_video": "codec.api",
    "iter_decoded": "codec.api",
    "BitstreamError": "codec.errors",
    "CodecError": "codec.errors",
    "CodecConfigError": "codec.errors",
    "VideoInputError": "codec.errors",
}

__all__ = [
    "BitstreamError",
    "CodecConfig",
    "CodecConfigError",
    "CodecError",
    "ContainerReader",
    "ContainerWriter",
    "FitConfig",
    "QuantConfig",
    "StreamHeader",
    "VideoInputError",
    "decode_gop",
    "decode_video",
    "encode_gop",
    "encode_gop_report",
    "encode_video",
    "iter_decoded",
]

if TYPE_CHECKING:
    from codec.api import decode_video, encode_video, iter_decoded
    from codec.config import CodecConfig, FitConfig, QuantConfig
    from codec.container import ContainerReader, ContainerWriter, StreamHeader
    from codec.errors import BitstreamError, CodecConfigError, CodecError, VideoInputError
    from codec.gop import decode_gop, encode_gop, encode_gop_report


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
