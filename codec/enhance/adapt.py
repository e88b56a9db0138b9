"""Per-GOP use of the enhancer: the encoder's choice (strength, modulation, whether it pays) and
the decoder's application.

Encoder (:func:`choose_enhancement`), on the GOP's decoded frames and their sources:

1. strength ``t``: the level nearest :func:`codec.enhance.model.strength_of_psnr` of the GOP's mean
   PSNR and its neighbours ``+-T_SEARCH``; the one with the least squared error wins;
2. modulation (mode ``"on"``): ``N_MOD`` values fitted by Adam (``FIT_STEPS`` steps) on at most
   ``FIT_FRAMES`` of the GOP's frames (crops of at most ``FIT_SIDE`` px), then quantised at each
   of ``MOD_STEPS`` and entropy-coded;
3. the rate-distortion rule of the P-frames: among "no record", "base network at t" and each
   quantised modulation, keep the one with the least ``D + lambda R``, where ``D`` is the squared
   error of what the decoder will output (8-bit levels^2 summed over pixels and channels) and
   ``R`` the record's bits (its length field included). ``lambda`` is ``fit.pframe_rd_lambda``.

Decoder (:func:`apply_record`): parse, check the model tag, run the network once per frame.
The enhancer is a post-filter: it never touches the prediction loop.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from codec.bitstream import write_varint
from codec.enhance import gopfilter
from codec.enhance.model import N_MOD, EnhanceNet, strength_of_psnr
from codec.enhance.record import (
    FILTER_MAX,
    FILTER_MIN_FORMAT,
    MOD_MAX,
    MOD_STEPS,
    EnhancerRecord,
    decode_record,
    encode_record,
    scale_code_for,
)
from codec.enhance.weights import load_enhancer, model_tag

T_SEARCH = 0.08  # strength neighbours tried around the PSNR-derived t
FIT_STEPS = 40  # Adam steps fitting the modulation
FIT_LR = 0.05
FIT_FRAMES = 4  # frames of the GOP the modulation is fitted on (evenly spaced)
FIT_SIDE = 192  # fitting crop side (px) per frame, centred
ENHANCE_MODES = ("off", "base", "on", "filter")


@dataclass
class EnhanceChoice:
    """The encoder's decision for one GOP."""

    record: bytes  # b"": no record
    enhanced: np.ndarray  # uint8 [T, H, W, 3], what the decoder will output (recon when no record)
    kind: str  # "none", "base" or "modulated"
    t: float
    sse_plain: float  # squared error of the un-enhanced frames (8-bit levels^2)
    sse: float  # squared error of ``enhanced``
    seconds: float


def _to_nchw(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames_u8)).permute(0, 3, 1, 2).float() / 255.0


def run_network(
    net: EnhanceNet, frames_u8: np.ndarray, t: float, m: np.ndarray | None
) -> np.ndarray:
    """The network at strength ``t`` with modulation ``m`` (float32 [N_MOD] or None) on uint8
    [T, H, W, 3] frames, one frame at a time -> uint8 [T, H, W, 3]."""
    out = np.empty_like(frames_u8)
    tt = torch.tensor([t], dtype=torch.float32)
    mm = None if m is None else torch.from_numpy(np.asarray(m, dtype=np.float32))[None]
    with torch.no_grad():
        for i in range(frames_u8.shape[0]):
            y = net(_to_nchw(frames_u8[i : i + 1]), tt, mm)
            out[i] = (y[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def sse(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """Squared error in 8-bit levels^2 summed over every pixel and channel."""
    if a_u8.shape != b_u8.shape:
        raise ValueError(f"sse: shapes {a_u8.shape} and {b_u8.shape} differ")
    frames_a = a_u8 if a_u8.ndim == 4 else a_u8[None]
    frames_b = b_u8 if b_u8.ndim == 4 else b_u8[None]
    total = 0
    for a, b in zip(frames_a, frames_b, strict=True):  # a frame at a time: bounded memory
        d = a.astype(np.int32) - b.astype(np.int32)
        total += int(np.dot(d.ravel().astype(np.int64), d.ravel().astype(np.int64)))
    return float(total)


def _record_bits(record: bytes) -> float:
    """Bits the enhancer field costs beyond an empty one (length varint + record - 1 byte)."""
    return 8.0 * (len(write_varint(len(record))) + len(record) - 1)


def _fit_set(source: np.ndarray, recon: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded, source) float32 [F, 3, h, w]: evenly spaced frames, centre crops."""
    t_count, h, w, _ = source.shape
    idx = np.unique(np.linspace(0, t_count - 1, min(FIT_FRAMES, t_count)).round().astype(int))
    ch, cw = min(h, FIT_SIDE), min(w, FIT_SIDE)
    y, x = (h - ch) // 2, (w - cw) // 2
    return (
        _to_nchw(recon[idx, y : y + ch, x : x + cw]),
        _to_nchw(source[idx, y : y + ch, x : x + cw]),
    )


def fit_modulation(
    net: EnhanceNet, source: np.ndarray, recon: np.ndarray, t: float, seed: int = 0
) -> np.ndarray:
    """float32 [N_MOD]: the modulation that best restores (a part of) this GOP at strength ``t``."""
    torch.manual_seed(seed)
    dec, src = _fit_set(source, recon)
    m = torch.zeros(1, N_MOD, requires_grad=True)
    opt = torch.optim.Adam([m], lr=FIT_LR)
    tt = torch.full((dec.shape[0],), t, dtype=torch.float32)
    for _ in range(FIT_STEPS):
        loss = torch.nn.functional.mse_loss(net(dec, tt, m.expand(dec.shape[0], -1)), src)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return m.detach()[0].numpy().astype(np.float32)


def choose_enhancement(
    source: np.ndarray,
    recon: np.ndarray,
    mode: str,
    rd_lambda: float,
    *,
    seed: int = 0,
    net: EnhanceNet | None = None,
    tag: int | None = None,
) -> EnhanceChoice:
    """The encoder's enhancer decision for a GOP (uint8 [T, H, W, 3] source and decoded frames).

    ``mode``: "base" (strength only), "on" (strength, modulation and the per-GOP filter) or
    "filter" (the per-GOP filter alone: no network, no weights); ``net``/``tag`` default to the
    shipped weights."""
    if mode not in ("base", "on", "filter"):
        raise ValueError(
            f"enhance mode {mode!r}: choose_enhancement needs 'base', 'on' or 'filter'"
        )
    start = time.perf_counter()
    sse_plain = sse(recon, source)
    if mode == "filter":
        cost, record, out, d = best_filter(source, recon, rd_lambda, sse_plain)
        kind = "filter" if record else "none"
        return EnhanceChoice(record, out, kind, 0.0, sse_plain, d, time.perf_counter() - start)
    if net is None or tag is None:
        net, sha = load_enhancer()
        tag = model_tag(sha)
    n_px = recon.shape[0] * recon.shape[1] * recon.shape[2] * 3
    psnr = 10 * np.log10(255.0**2 * n_px / max(sse_plain, 1e-9))
    t0 = strength_of_psnr(float(psnr))
    best: tuple[float, bytes, np.ndarray, str, float, float] = (
        sse_plain,
        b"",
        recon,
        "none",
        t0,
        sse_plain,
    )
    levels_tried: set[int] = set()
    best_t_level, best_t_sse = -1, float("inf")
    for dt in (0.0, -T_SEARCH, T_SEARCH):
        level = int(np.clip(round((t0 + dt) * 255), 0, 255))
        if level in levels_tried:
            continue
        levels_tried.add(level)
        rec = encode_record(EnhancerRecord(tag, level))
        out = run_network(net, recon, level / 255.0, None)
        d = sse(out, source)
        if d < best_t_sse:
            best_t_level, best_t_sse = level, d
        cost = d + rd_lambda * _record_bits(rec)
        if cost < best[0]:
            best = (cost, rec, out, "base", level / 255.0, d)
    if mode == "on":
        t = best_t_level / 255.0
        m = fit_modulation(net, source, recon, t, seed)
        for step_i, step in enumerate(MOD_STEPS):
            levels = np.clip(np.round(m / step), -MOD_MAX, MOD_MAX).astype(np.int64)
            if not levels.any():
                continue
            rec_m = EnhancerRecord(
                tag, best_t_level, step_i, scale_code_for(levels), tuple(int(v) for v in levels)
            )
            data = encode_record(rec_m)
            modulation = rec_m.modulation()
            out = run_network(net, recon, t, modulation)
            d = sse(out, source)
            cost = d + rd_lambda * _record_bits(data)
            if cost < best[0]:
                best = (cost, data, out, "modulated", t, d)
    if mode == "on":
        cost, data, out, d = best_filter(source, recon, rd_lambda, sse_plain)
        if data and cost < best[0]:
            best = (cost, data, out, "filter", 0.0, d)
    _, record, enhanced, kind, t_best, d_best = best
    return EnhanceChoice(
        record, enhanced, kind, t_best, sse_plain, d_best, time.perf_counter() - start
    )


FILTER_TRIES = 2  # (shape, step) candidates applied for their true error, best predicted first


def best_filter(
    source: np.ndarray, recon: np.ndarray, rd_lambda: float, sse_plain: float
) -> tuple[float, bytes, np.ndarray, float]:
    """The per-GOP filter (codec.enhance.gopfilter) with the least ``D + lambda R`` over its shapes
    and steps, against sending nothing: (cost, record or b"", output uint8 [T, H, W, 3], D).
    Every (shape, step) is ranked by its error predicted from the normal equations; the best
    FILTER_TRIES are applied, and ``D`` is the error of exactly what the decoder will output."""
    fitted = gopfilter.Fit(recon, source)
    ranked: list[tuple[float, bytes, EnhancerRecord]] = []
    for shape in range(len(gopfilter.SHAPES)):
        coefs = fitted.coefs(shape)
        for step in range(len(gopfilter.STEP_BITS)):
            levels = gopfilter.quantise(coefs, shape, gopfilter.STEP_BITS[step])
            if np.abs(levels).max() > FILTER_MAX or not levels.any():
                continue
            rec = EnhancerRecord(
                0,
                0,
                run_network=False,
                filter_shape=shape,
                filter_step=step,
                filter_scale=scale_code_for(levels),
                filter_levels=tuple(int(v) for v in levels.reshape(-1)),
            )
            data = encode_record(rec)
            q_coefs = rec.filter_coefs()
            assert q_coefs is not None
            predicted = fitted.sse_levels2(q_coefs, shape) + rd_lambda * _record_bits(data)
            ranked.append((predicted, data, rec))
    ranked.sort(key=lambda r: r[0])
    best: tuple[float, bytes, np.ndarray, float] = (sse_plain, b"", recon, sse_plain)
    for _, data, rec in ranked[:FILTER_TRIES]:
        out = gopfilter.apply(recon, rec.filter_coefs(), rec.filter_shape)  # type: ignore[arg-type]
        d = sse(out, source)
        cost = d + rd_lambda * _record_bits(data)
        if cost < best[0]:
            best = (cost, data, out, d)
    return best


def network_for(
    rec: EnhancerRecord, net: EnhanceNet | None = None, tag: int | None = None
) -> tuple[EnhanceNet, int] | None:
    """(network, its model tag) to run for ``rec``, loading the shipped weights when ``net`` is
    None; None, with a warning, when the record was made with other weights (tag mismatch).
    Raises EnhancerWeightsError on missing weights."""
    if net is None or tag is None:
        net, sha = load_enhancer()
        tag = model_tag(sha)
    if rec.model_tag != tag:
        warnings.warn(
            f"this GOP's enhancer record was made with other enhancer weights (tag "
            f"{rec.model_tag:04x}, these are {tag:04x}); showing the frames un-enhanced",
            stacklevel=3,
        )
        return None
    return net, tag


def apply_parsed(
    rec: EnhancerRecord,
    recon: np.ndarray,
    net: EnhanceNet | None = None,
    tag: int | None = None,
) -> np.ndarray:
    """uint8 [T, H, W, 3] ``recon`` enhanced as the parsed record says: the network
    (:func:`network_for`) unless the record skips it, then its filter if any. A record made with
    other weights leaves the frames as decoded. Raises EnhancerWeightsError on missing weights
    (only records that run the network)."""
    out = recon
    if rec.run_network:
        loaded = network_for(rec, net, tag)
        if loaded is None:
            return recon
        out = run_network(loaded[0], recon, rec.t, rec.modulation())
    coefs = rec.filter_coefs()
    if coefs is not None:
        out = gopfilter.apply(out, coefs, rec.filter_shape)
    return out


def apply_record(
    record: bytes,
    recon: np.ndarray,
    *,
    net: EnhanceNet | None = None,
    tag: int | None = None,
    fmt: int = FILTER_MIN_FORMAT,
) -> np.ndarray:
    """The decoder's side: ``recon`` (uint8 [T, H, W, 3]) enhanced as ``record`` (of GOP format
    ``fmt``) says (:func:`apply_parsed`). Raises BitstreamError on a malformed record."""
    return apply_parsed(decode_record(record, N_MOD, fmt), recon, net, tag)
