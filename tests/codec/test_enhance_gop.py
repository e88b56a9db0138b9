"""The enhancer inside encode_gop/decode_gop with the shipped weights: the closed loop is untouched,
the decoder reproduces the encoder's enhanced output, and the shipped file matches its hash."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from codec.bitstream import GOP_FORMAT_VERSION, unpack_gop_enhanced
from codec.config import CodecConfig
from codec.enhance.weights import WEIGHTS_PATH, WEIGHTS_SHA256, file_sha256, load_enhancer
from codec.errors import CodecConfigError
from codec.gop import decode_gop, encode_gop, encode_gop_report
from tests.codec.test_gop import moving_blob_frames, tiny_config


def test_shipped_weights_load_and_match_the_documented_hash() -> None:
    assert WEIGHTS_PATH.stat().st_size <= 8 * 1024 * 1024
    assert file_sha256(WEIGHTS_PATH) == WEIGHTS_SHA256
    readme = (Path(WEIGHTS_PATH).parent / "README.md").read_text()
    assert WEIGHTS_SHA256 in re.findall(r"[0-9a-f]{64}", readme)
    net, sha = load_enhancer()
    assert sha == WEIGHTS_SHA256 and not net.training


def test_damaged_shipped_weights_name_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from codec.enhance.weights import EnhancerWeightsError

    monkeypatch.setattr("codec.enhance.weights.WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(EnhancerWeightsError, match=r"enhancer\.pt.*git checkout"):
        load_enhancer()


def test_config_enhance_setting() -> None:
    assert CodecConfig().enhance == "off"
    cfg = CodecConfig.preset("fast", 4, enhance="on")
    assert cfg.enhance == "on" and CodecConfig.from_dict(cfg.to_compact()) == cfg
    with pytest.raises(CodecConfigError, match="enhance"):
        CodecConfig(enhance="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["base", "on", "filter"])
def test_enhancer_is_a_post_filter_and_round_trips(mode: str) -> None:
    frames = moving_blob_frames(t=3, h=40, w=44)
    off = encode_gop_report(frames, tiny_config())
    res = encode_gop_report(frames, tiny_config(enhance=mode, fit__pframe_rd_lambda=0.0))
    plain_cfg = encode_gop_report(frames, tiny_config(fit__pframe_rd_lambda=0.0))
    # the Gaussians (frame records) and the closed-loop reconstruction are those of enhance off
    assert unpack_gop_enhanced(res.payload)[1] == unpack_gop_enhanced(plain_cfg.payload)[1]
    np.testing.assert_array_equal(res.recon, plain_cfg.recon)
    np.testing.assert_array_equal(decode_gop(res.payload, enhance=False), res.recon)
    np.testing.assert_array_equal(decode_gop(res.payload), res.output())
    assert len(unpack_gop_enhanced(off.payload)[2]) == 0
    header, _, record = unpack_gop_enhanced(res.payload)
    assert len(record) == res.enhancer_bytes and header.version == GOP_FORMAT_VERSION
    if mode == "filter":  # least squares on the GOP itself always lowers its error
        assert record
    if record:  # kept only because it lowered the error (lambda 0: any gain pays)
        err = lambda out: float(((out.astype(float) - frames) ** 2).sum())  # noqa: E731
        assert err(res.output()) < err(res.recon)
        kinds = ("filter",) if mode == "filter" else ("base", "modulated", "filter")
        assert res.enhance_kind in kinds
    else:
        assert res.enhanced is None and res.enhance_kind == "none"


def test_enhanced_encode_is_deterministic() -> None:
    frames = moving_blob_frames(t=2, h=36, w=36)
    cfg = tiny_config(enhance="on", seed=3)
    assert encode_gop(frames, cfg) == encode_gop(frames, cfg)
