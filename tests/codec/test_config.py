"""CodecConfig: presets, validation and the compact form stream headers carry."""

from __future__ import annotations

import json

import pytest

from codec.config import PRESETS, CodecConfig
from codec.errors import CodecConfigError


@pytest.mark.parametrize(
    "config",
    [
        CodecConfig.preset("fast", 4),
        CodecConfig.preset("slow", 9),
        CodecConfig.preset("ultrafast", 3),
        CodecConfig.preset("fast", 2, gop=7, seed=3, fit__lr=0.01, quant__rgb_bits=9),
        CodecConfig(),
    ],
)
def test_compact_form_round_trips_through_json(config: CodecConfig) -> None:
    compact = config.to_compact()
    assert CodecConfig.from_dict(json.loads(json.dumps(compact))) == config
    assert CodecConfig.from_dict(config.to_dict()) == config
    assert len(json.dumps(compact)) < len(json.dumps(config.to_dict()))


def test_a_preset_is_named_without_overrides() -> None:
    assert CodecConfig.preset("slow", 6).to_compact() == {"preset": "slow", "quality": 6}
    assert CodecConfig.preset("ultrafast", 4).to_compact() == {"preset": "ultrafast", "quality": 4}


def test_speed_ladder_spends_fewer_iterations_the_faster_the_preset() -> None:
    ultra, fast, slow = (CodecConfig.preset(n, 5).fit for n in PRESETS)  # type: ignore[arg-type]
    assert ultra.iframe_iters <= fast.iframe_iters <= slow.iframe_iters
    assert ultra.pframe_iters <= fast.pframe_iters <= slow.pframe_iters
    assert (
        ultra.iframe_stop_db_per_iter
        >= fast.iframe_stop_db_per_iter
        >= slow.iframe_stop_db_per_iter
    )
    assert (
        ultra.pframe_stop_db_per_iter
        >= fast.pframe_stop_db_per_iter
        >= slow.pframe_stop_db_per_iter
    )
    # the ladder changes how long the fits run, not what the bitstream can carry
    assert CodecConfig.preset("ultrafast", 5).quant == CodecConfig.preset("fast", 5).quant


@pytest.mark.parametrize(
    "data",
    [
        {"preset": "medium", "quality": 4},
        {"preset": "fast", "quality": 4, "overrides": {"fit__stop_window": 0}},
        {"preset": "fast", "quality": 4, "overrides": {"fit__pframe_stop_db_per_iter": -1.0}},
        {"preset": "fast", "quality": 11},
        {"preset": "fast", "quality": 4, "overrides": {"fit__nope": 1}},
        {"preset": "fast", "extra": 1},
        {"preset": "fast", "overrides": [1]},
        {"gop": 0},
    ],
)
def test_bad_configs_raise_the_config_error(data: dict[str, object]) -> None:
    with pytest.raises(CodecConfigError):
        CodecConfig.from_dict(data)
