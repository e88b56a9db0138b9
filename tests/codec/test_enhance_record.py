"""The enhancer record and GOP format 6: coding, fuzzing, old formats, decode with and without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codec.bitstream import GOP_FORMAT_VERSION, GopHeader, pack_gop, unpack_gop_enhanced
from codec.enhance import adapt, gopfilter
from codec.enhance.model import N_MOD, EnhanceNet
from codec.enhance.record import (
    MAX_MOD_BYTES,
    MOD_MAX,
    EnhancerRecord,
    decode_record,
    encode_record,
    scale_code_for,
)
from codec.enhance.train import save_weights
from codec.enhance.weights import load_enhancer, model_tag
from codec.errors import BitstreamError
from codec.gop import decode_gop

DATA = Path(__file__).parent / "data"


def modulated_record(seed: int = 0, tag: int = 0x1234) -> EnhancerRecord:
    rng = np.random.default_rng(seed)
    levels = np.clip(np.round(rng.laplace(0, 3, size=N_MOD)), -MOD_MAX, MOD_MAX).astype(int)
    return EnhancerRecord(tag, 77, 1, scale_code_for(levels), tuple(int(v) for v in levels))


def test_record_round_trips() -> None:
    base = EnhancerRecord(0xBEEF, 200, 0)
    data = encode_record(base)
    assert len(data) == 4 and decode_record(data, N_MOD) == base
    for seed in range(5):
        rec = modulated_record(seed)
        data = encode_record(rec)
        assert decode_record(data, N_MOD) == rec
        assert len(data) < 6 + N_MOD  # entropy coding beats a byte per value
    extreme = EnhancerRecord(1, 0, 2, 255, tuple([MOD_MAX, -MOD_MAX] * (N_MOD // 2)))
    assert decode_record(encode_record(extreme), N_MOD) == extreme


def test_record_rejects_bad_fields_on_write() -> None:
    with pytest.raises(ValueError):
        encode_record(EnhancerRecord(0x10000, 0))
    with pytest.raises(ValueError):
        encode_record(EnhancerRecord(1, 0, 0, 4, tuple([MOD_MAX + 1] * N_MOD)))


def test_truncated_record_raises_bitstream_error() -> None:
    for data in (encode_record(EnhancerRecord(5, 9)), encode_record(modulated_record())):
        for cut in range(len(data)):
            with pytest.raises(BitstreamError):
                decode_record(data[:cut], N_MOD)
        with pytest.raises(BitstreamError):
            decode_record(data + b"\x01", N_MOD)


def test_bit_flips_give_a_clear_error_or_a_valid_record() -> None:
    """Every single-bit flip is either caught (BitstreamError) or parses to an in-range record:
    never another exception, a hang or an allocation the record did not bound."""
    data = encode_record(modulated_record(3))
    caught = 0
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            rec = decode_record(bytes(flipped), N_MOD)
        except BitstreamError:
            caught += 1
            continue
        assert 0 <= rec.t_level <= 255
        assert rec.levels is None or (
            len(rec.levels) == N_MOD and max(abs(v) for v in rec.levels) <= MOD_MAX
        )
    assert caught > 0  # the flag and length checks do catch some


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x08",  # unknown flag bit
        b"\x00\x00\x00\x06",  # step index 3
        b"\x00\x00\x00\x01\x00\x01\x00",  # zero scale
        b"\x00\x00\x00\x01\x04\x00",  # zero-length body
        b"\x00\x00\x00\x01\x04" + bytes([0x81, 0x10]),  # body longer than MAX_MOD_BYTES
        b"\x00\x00\x00\x01\x04\x05ab",  # body shorter than claimed
    ],
)
def test_malformed_records(data: bytes) -> None:
    assert MAX_MOD_BYTES < 0x801
    with pytest.raises(BitstreamError):
        decode_record(data, N_MOD)


def test_gop_format_enhancer_field_and_fuzz() -> None:
    payload = (DATA / "gop_v5.bin").read_bytes()
    header, frames, enh = unpack_gop_enhanced(payload)
    assert header.version == 5 and enh == b""
    v6_header = GopHeader(header.height, header.width, header.n_frames, header.grid)
    record = encode_record(modulated_record())
    v6 = pack_gop(v6_header, frames, record)
    h6, f6, e6 = unpack_gop_enhanced(v6)
    assert h6.version == GOP_FORMAT_VERSION and f6 == frames and e6 == record
    for cut in range(len(v6) - len(record) - 2, len(v6)):
        with pytest.raises(BitstreamError):
            unpack_gop_enhanced(v6[:cut])
    with pytest.raises(ValueError):
        pack_gop(header, frames, record)  # format 5 has no enhancer field


@pytest.mark.parametrize(
    "name",
    [
        "gop_v5",  # format 5, legacy render (flags 0), written at main 20eb71a
        "gop_v5_canonical",  # format 5, RENDER_CANONICAL flag, written at main 2505efc
    ],
)
def test_old_format_5_fixtures_still_decode_exactly(name: str) -> None:
    """GOPs written by format-5 encoders decode to what those encoders reconstructed."""
    payload = (DATA / f"{name}.bin").read_bytes()
    expected = np.load(DATA / f"{name}_recon.npy")
    assert payload[4] == 5
    np.testing.assert_array_equal(decode_gop(payload), expected)
    np.testing.assert_array_equal(decode_gop(payload, enhance=False), expected)


@pytest.fixture
def temp_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[EnhanceNet, int]:
    """A small non-trivial network installed as 'the shipped weights' for this test."""
    torch.manual_seed(5)
    net = EnhanceNet()
    torch.nn.init.normal_(net.tail.weight, std=0.02)
    path = tmp_path / "enhancer.pt"
    sha = save_weights(net, path, {"note": "test"})
    monkeypatch.setattr("codec.enhance.weights.WEIGHTS_PATH", path)
    monkeypatch.setattr("codec.enhance.weights.WEIGHTS_SHA256", sha)
    loaded, _ = load_enhancer()
    return loaded, model_tag(sha)


def test_decode_applies_the_record_and_can_skip_it(temp_weights: tuple[EnhanceNet, int]) -> None:
    net, tag = temp_weights
    payload = (DATA / "gop_v5.bin").read_bytes()
    plain = np.load(DATA / "gop_v5_recon.npy")
    header, frames, _ = unpack_gop_enhanced(payload)
    rec = EnhancerRecord(tag, 100, 1, 16, tuple([3, -2] * (N_MOD // 2)))
    v6 = pack_gop(
        GopHeader(header.height, header.width, header.n_frames, header.grid),
        frames,
        encode_record(rec),
    )
    enhanced = decode_gop(v6)
    assert not np.array_equal(enhanced, plain)
    m = rec.modulation()
    np.testing.assert_array_equal(enhanced, adapt.run_network(net, plain, rec.t, m))
    np.testing.assert_array_equal(decode_gop(v6, enhance=False), plain)  # the raw Gaussians
    # a record made with other weights: frames as decoded, with a warning
    other = EnhancerRecord((tag + 1) % 65536, 100)
    v6_other = pack_gop(
        GopHeader(header.height, header.width, header.n_frames, header.grid),
        frames,
        encode_record(other),
    )
    with pytest.warns(UserWarning, match="other enhancer weights"):
        np.testing.assert_array_equal(decode_gop(v6_other), plain)


def test_rd_choice_never_loses_and_costs_nothing_when_it_does_not_pay(
    temp_weights: tuple[EnhanceNet, int],
) -> None:
    net, tag = temp_weights
    plain = np.load(DATA / "gop_v5_recon.npy")
    source = np.clip(plain.astype(int) + 6, 0, 255).astype(np.uint8)  # a uniform bias to remove
    huge = adapt.choose_enhancement(source, plain, "on", 1e12, net=net, tag=tag)
    assert huge.record == b"" and huge.kind == "none" and huge.enhanced is plain
    free = adapt.choose_enhancement(source, plain, "on", 0.0, net=net, tag=tag)
    assert free.sse <= free.sse_plain
    if free.record:
        assert adapt.apply_record(free.record, plain, net=net, tag=tag).tobytes() == (
            free.enhanced.tobytes()
        )


def filter_record(shape: int = 2, seed: int = 0, run_network: bool = False) -> EnhancerRecord:
    rng = np.random.default_rng(seed)
    levels = rng.integers(-40, 41, 3 * gopfilter.n_coefs(shape))
    return EnhancerRecord(
        0x1234 if run_network else 0,
        77 if run_network else 0,
        run_network=run_network,
        filter_shape=shape,
        filter_step=seed % len(gopfilter.STEP_BITS),
        filter_scale=int(np.clip(round(float(np.abs(levels).mean()) * 16), 1, 255)),
        filter_levels=tuple(int(v) for v in levels),
    )


@pytest.mark.parametrize("shape", range(len(gopfilter.SHAPES)))
def test_filter_record_round_trips_and_format_6_refuses_it(shape: int) -> None:
    for rec in (filter_record(shape), filter_record(shape, 1, run_network=True)):
        data = encode_record(rec)
        assert decode_record(data, N_MOD) == rec
        with pytest.raises(BitstreamError, match="flag bits"):
            decode_record(data, N_MOD, 6)  # bits 3-4 are format 7's
    both = EnhancerRecord(
        **{
            **modulated_record().__dict__,
            **{k: v for k, v in filter_record(shape).__dict__.items() if k.startswith("filter_")},
        }
    )
    assert decode_record(encode_record(both), N_MOD) == both  # network, modulation, filter
    with pytest.raises(ValueError):  # skipping the network needs a filter
        encode_record(EnhancerRecord(0, 0, run_network=False))


def test_filter_record_fuzz_gives_clear_errors_or_bounded_records() -> None:
    data = encode_record(filter_record(2, 3))
    rng = np.random.default_rng(1)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_record(data[:cut], N_MOD)
    with pytest.raises(BitstreamError):
        decode_record(data + b"\0", N_MOD)
    for _ in range(300):
        bad = bytearray(data)
        i = int(rng.integers(0, len(bad)))
        bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            rec = decode_record(bytes(bad), N_MOD)
        except BitstreamError:
            continue
        if rec.filter_levels is not None:
            assert len(rec.filter_levels) == 3 * gopfilter.n_coefs(rec.filter_shape)


def test_gop_filter_fits_restores_and_is_identity_at_zero() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48].astype(np.float64)
    src = np.stack([128 + 60 * np.sin(xx / 3 + t) * np.cos(yy / 4) for t in range(3)])
    src = np.repeat(src[..., None], 3, axis=3) + rng.normal(0, 2, (3, 40, 48, 3))
    src_u8 = np.clip(src, 0, 255).astype(np.uint8)
    blurred = 0.5 * src + 0.25 * (np.roll(src, 1, axis=2) + np.roll(src, -1, axis=2))
    dec_u8 = np.clip(blurred, 0, 255).astype(np.uint8)  # a soft "decoded" picture
    for shape in range(len(gopfilter.SHAPES)):
        assert np.array_equal(gopfilter.apply(dec_u8, gopfilter.identity(shape), shape), dec_u8)
        coefs = gopfilter.Fit(dec_u8, src_u8).coefs(shape)
        out = gopfilter.apply(dec_u8, coefs, shape)
        err = lambda a: float(((a.astype(float) - src_u8) ** 2).mean())  # noqa: E731
        assert err(out) < 0.7 * err(dec_u8)  # the filter sharpens the blur back
        lv = gopfilter.quantise(coefs, shape, 10)
        back = gopfilter.dequantise(lv, shape, 10)
        assert np.abs(back - coefs).max() <= 0.5 / 1024 + 1e-12


def test_filter_only_record_decodes_without_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_weights() -> None:
        raise AssertionError("a filter-only record must not load the network")

    monkeypatch.setattr(adapt, "load_enhancer", no_weights)
    rec = filter_record(0, 2)
    frames = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    out = adapt.apply_record(encode_record(rec), frames)
    expected = gopfilter.apply(frames, rec.filter_coefs(), 0)  # type: ignore[arg-type]
    assert np.array_equal(out, expected)


def test_gop_filter_subsampling_is_not_biased_by_a_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source whose error sits on a 4-pixel grid (like codec blocks): the sampled normal
    equations move their phase frame by frame, so they fit what the full ones fit."""
    rng = np.random.default_rng(0)
    src = rng.integers(40, 216, (16, 64, 64, 3)).astype(np.uint8)
    noise = np.zeros(src.shape, dtype=np.int64)
    noise[:, ::4, ::4] = rng.integers(-30, 31, noise[:, ::4, ::4].shape)
    dec = np.clip(src.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    full = gopfilter.Fit(dec, src)
    monkeypatch.setattr(gopfilter, "FIT_MAX_PIXELS", 16 * 64 * 64 // 16)  # stride 4
    sampled = gopfilter.Fit(dec, src)
    for shape in range(len(gopfilter.SHAPES)):
        err_full = adapt.sse(gopfilter.apply(dec, full.coefs(shape), shape), src)
        err_sampled = adapt.sse(gopfilter.apply(dec, sampled.coefs(shape), shape), src)
        assert err_sampled < 1.05 * err_full
