"""The enhancer: content-adaptive one-step restoration after decoding (seeds 000 and 001).

``codec/gop.py`` calls :func:`enhance_gop` at the end of encoding (a post-filter on the finished
closed-loop reconstruction) and :func:`apply_enhancer` at the end of decoding. See README.md
beside this file for the network, the training command and the weights' hash.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from codec.config import CodecConfig
from codec.enhance.adapt import (
    EnhanceChoice,
    apply_parsed,
    apply_record,
    choose_enhancement,
    network_for,
)
from codec.enhance.model import N_MOD
from codec.enhance.record import FILTER_MIN_FORMAT, decode_record
from codec.enhance.weights import EnhancerWeightsError, load_enhancer

__all__ = [
    "EnhanceChoice",
    "EnhancerWeightsError",
    "apply_enhancer",
    "enhance_gop",
    "frame_enhancer",
    "load_enhancer",
]

_NO_RECORD_KIND = "none"


def enhance_gop(source: np.ndarray, recon: np.ndarray, config: CodecConfig) -> EnhanceChoice:
    """The GOP encoder's hook: the enhancer record for ``recon`` (uint8 [T, H, W, 3], the closed-loop
    reconstruction of ``source``) under ``config`` (a CodecConfig: its ``enhance`` mode, its seed and
    the P-frames' ``fit.pframe_rd_lambda``). With ``enhance="off"`` no record (and no work)."""
    if config.enhance == "off":
        return EnhanceChoice(b"", recon, _NO_RECORD_KIND, 0.0, 0.0, 0.0, 0.0)
    lam = config.fit.pframe_rd_lambda
    return choose_enhancement(source, recon, config.enhance, lam, seed=config.seed)


def apply_enhancer(record: bytes, recon: np.ndarray, fmt: int = FILTER_MIN_FORMAT) -> np.ndarray:
    """The GOP decoder's hook: ``recon`` (uint8 [T, H, W, 3]) enhanced as ``record`` (of GOP
    format ``fmt``) says."""
    return apply_record(record, recon, fmt=fmt)


def frame_enhancer(
    record: bytes, fmt: int = FILTER_MIN_FORMAT
) -> Callable[[np.ndarray], np.ndarray]:
    """The streaming decoder's hook: parse ``record`` (of GOP format ``fmt``) and load the
    weights once (only when it runs the network), then enhance frame by frame (uint8 [H, W, 3]
    -> uint8 [H, W, 3]), exactly as :func:`apply_enhancer` does for a whole GOP. Raises
    BitstreamError on a malformed record, EnhancerWeightsError on missing weights; a record made
    with other weights gives the identity, with a warning."""
    rec = decode_record(record, N_MOD, fmt)
    net, tag = None, None
    if rec.run_network:
        loaded = network_for(rec)  # once per GOP: loads the weights, warns on other weights
        if loaded is None:
            return lambda frame: frame
        net, tag = loaded
    return lambda frame: apply_parsed(rec, frame[None], net, tag)[0]
