"""The enhancer: content-adaptive one-step restoration after decoding (seeds 000 and 001).

``codec/gop.py`` calls :func:`enhance_gop` at the end of encoding (a post-filter on the finished
closed-loop reconstruction) and :func:`apply_enhancer` at the end of decoding. See README.md
beside this file for the network, the training command and the weights' hash.
"""

from __future__ import annotations

import numpy as np

from codec.config import CodecConfig
from codec.enhance.adapt import EnhanceChoice, apply_record, choose_enhancement
from codec.enhance.weights import EnhancerWeightsError, load_enhancer

__all__ = [
    "EnhanceChoice",
    "EnhancerWeightsError",
    "apply_enhancer",
    "enhance_gop",
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


def apply_enhancer(record: bytes, recon: np.ndarray) -> np.ndarray:
    """The GOP decoder's hook: ``recon`` (uint8 [T, H, W, 3]) enhanced as ``record`` says."""
    return apply_record(record, recon)
