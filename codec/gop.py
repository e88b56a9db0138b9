"""Encode and decode one GOP: an I-frame followed by closed-loop P-frames.

The encoder keeps exactly the state the decoder will have: after every frame
it dequantises what it transmitted and renders that, and the next P-frame is
fitted against this *decoded* reference (closed loop, unlike GSVC's open loop).
Decoder output therefore equals the encoder's reconstruction bit for bit,
which ``encode_gop_report`` returns so callers never need to decode to measure.

A GOP depends on nothing outside its payload, so GOPs can be encoded anywhere
(Ray workers), in any order, and decoded from any GOP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from codec.bitstream import (
    DEFAULT_LIMITS,
    DecodeLimits,
    FrameKind,
    GopHeader,
    pack_gop,
    unpack_gop,
    unpack_gop_enhanced,
)
from codec.config import CodecConfig
from codec.enhance import enhance_gop, frame_enhancer
from codec.entropy import (
    ModelMemory,
    canonical_order,
    decode_inter,
    decode_intra,
    encode_inter,
    encode_intra,
)
from codec.errors import BitstreamError, CodecConfigError
from codec.fit import fit_iframe, fit_pframe
from codec.gaussians import Gaussians, change_energy
from codec.init import iframe_budget, random_init, superpixel_init
from codec.metrics import psnr_db
from codec.quant import (
    QGaussians,
    QuantGrid,
    dequantize,
    fake_quantize,
    grid_nbytes,
    make_grid,
    quantize,
)
from codec.rdo import BITS_PER_LOG2, rd_select
from codec.render import RenderBackend, get_backend
from codec.render.canonical import render_canonical, render_canonical_u8, to_u8
from codec.render.torch_tiles import TorchTileBackend

MAX_SIDE_PX = 8192  # largest frame side the codec accepts
MAX_GOP_FRAMES = 10_000
MAX_DECODE_BYTES = 8 * 1024**3  # a GOP that would decode to more raw RGB than this is refused
QAT_FINETUNE_FRACTION = (
    0.25  # quantisation-aware fine-tuning iterations, as a share of iframe_iters
)
# GOP header flags (docs/FORMAT.md). RENDER_CANONICAL: the GOP's pixels are the canonical render
# (codec/render/canonical.py: polynomial exp, per-pixel sums in Gaussian order), which the fused
# C++ kernel and its PyTorch emulation produce bit for bit. GOPs without it (written before the
# flag existed) decode with the tile backend's render_nograd, exactly as their encoder saw them.
RENDER_CANONICAL = 0x01
KNOWN_GOP_FLAGS = RENDER_CANONICAL
SCENE_CUT_DROP_DB = 6.0  # a scene cut also needs the reference to fit the new frame this much worse


@dataclass
class FrameStats:
    """What one coded frame cost and achieved."""

    index: int
    kind: str  # "I" or "P"
    n_bytes: int
    psnr_db: float
    n_gaussians: int
    n_updated: int  # Gaussians whose quantised values changed (all of them for I-frames)
    n_added: int
    iters: int  # fit iterations run (I-frames: with quantisation-aware fine-tuning)
    encode_seconds: float  # wall time to code the frame (fit, quantise, entropy code, reconstruct)
    cpu_seconds: float = 0.0  # CPU time of this process meanwhile (all its threads)


@dataclass
class GopEncodeResult:
    payload: bytes
    recon: np.ndarray  # uint8 [T, H, W, 3], identical to decode_gop(payload, enhance=False)
    frames: list[FrameStats] = field(default_factory=list)
    # the enhancer (config.enhance, a post-filter): uint8 [T, H, W, 3] as decode_gop(payload)
    # outputs it when the GOP carries an enhancer record, else None; the record's size and kind
    enhanced: np.ndarray | None = None
    enhancer_bytes: int = 0
    enhance_kind: str = "none"  # "none", "base" or "modulated"
    enhance_seconds: float = 0.0

    def output(self) -> np.ndarray:
        """What decode_gop(payload) returns: the enhanced frames when there are, else recon."""
        return self.recon if self.enhanced is None else self.enhanced

    def stats_dicts(self) -> list[dict[str, object]]:
        return [asdict(f) for f in self.frames]


ProgressFn = Callable[[int, int], None]  # (frames done, frames total)


def to_float(frame_u8: np.ndarray) -> Tensor:
    """uint8 [H, W, 3] -> float32 [H, W, 3] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame_u8)).to(torch.float32) / 255.0


def check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    """Validate a GOP's frames; returns (T, H, W)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise CodecConfigError("frames must be a numpy uint8 array of shape [T, H, W, 3]")
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise CodecConfigError(f"frames must have shape [T, H, W, 3]; got {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1 or t > MAX_GOP_FRAMES:
        raise CodecConfigError(f"a GOP needs 1..{MAX_GOP_FRAMES} frames; got {t}")
    if not (1 <= h <= MAX_SIDE_PX and 1 <= w <= MAX_SIDE_PX):
        raise CodecConfigError(
            f"frame size {w}x{h} is out of range; each side must be 1..{MAX_SIDE_PX} px"
        )
    return t, h, w


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for ``device`` ("auto": CUDA when available, else the CPU); asking for CUDA
    without it raises CodecConfigError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CodecConfigError(
            f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'auto'"
        ) from exc
    if dev.type not in ("cpu", "cuda"):
        raise CodecConfigError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'auto'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CodecConfigError(
            f"device={device!r} but this machine has no CUDA device; use 'cpu' or 'auto'"
        )
    return dev


def gaussian_count(cfg: CodecConfig, height: int, width: int) -> int:
    """I-frame Gaussian count for a frame size at this config's density."""
    return max(1, round(cfg.fit.gaussians_per_kpx * height * width / 1000.0))


def _initialise(
    frame: Tensor, n: int, cfg: CodecConfig, roi_mask: Tensor | None, gen: torch.Generator
) -> Gaussians:
    h, w, _ = frame.shape
    if cfg.fit.init == "random":
        return random_init(h, w, n, generator=gen)
    return superpixel_init(frame, n, roi_mask=roi_mask, roi_share=cfg.fit.roi_share, generator=gen)


def _code_iframe(
    frame: Tensor,
    cfg: CodecConfig,
    backend: RenderBackend,
    roi_mask: Tensor | None,
    gen: torch.Generator,
    device: torch.device,
    following: np.ndarray | None = None,
) -> tuple[QGaussians, QuantGrid, bytes, int]:
    """Fit (on ``device``), quantise and entropy-code (on the CPU) an I-frame; returns (state in
    canonical order, its grid, bytes, iters). ``following``: uint8 [T, H, W, 3], this frame and
    the rest of the GOP (the budget may weigh how long each region lives)."""
    h, w, _ = frame.shape
    attr_bits = max(cfg.quant.chol_bits, cfg.quant.rgb_bits)
    n = iframe_budget(frame, cfg.fit, attr_bits, gaussian_count(cfg, h, w), following)
    # with densification the fit starts below its budget and grows into it (codec.densify)
    n_init = max(1, round(cfg.fit.budget_init_share * n)) if cfg.fit.densify else n
    init = _initialise(frame, n_init, cfg, roi_mask, gen)
    on_dev = frame.to(device)
    fitted = fit_iframe(on_dev, init.to(device), cfg.fit, backend, generator=gen, n_max=n)
    g, iters = fitted.gaussians.detach().to("cpu"), fitted.iters
    grid = make_grid(g, h, w, cfg.quant)
    if cfg.quant.mode == "qat":
        finetune_iters = max(1, int(cfg.fit.iframe_iters * QAT_FINETUNE_FRACTION))
        finetune = replace(cfg.fit, iframe_iters=finetune_iters, densify=False)
        tuned = fit_iframe(
            on_dev,
            g.to(device),
            finetune,
            backend,
            fake_quant=lambda x: fake_quantize(x, grid),
            generator=gen,
        )
        g, iters = tuned.gaussians.detach().to("cpu"), iters + tuned.iters
    q = quantize(g, grid)
    q = q.index(canonical_order(q))
    return q, grid, encode_intra(q, grid), iters


def _fake_quant_on(grid: QuantGrid) -> Callable[[Gaussians], Gaussians]:
    """Straight-through quantisation onto ``grid``'s P-frame levels for quantisation-aware P-frame fitting."""
    return lambda g: fake_quantize(g, grid, fine=True)


def _is_scene_cut(psnr_on_next_db: float, psnr_on_own_db: float, cut_db: float) -> bool:
    """The previous reconstruction fits the next frame badly (below ``cut_db``) and much worse
    than it fit its own frame (by SCENE_CUT_DROP_DB): new content, not motion at low quality."""
    return psnr_on_next_db < cut_db and psnr_on_next_db < psnr_on_own_db - SCENE_CUT_DROP_DB


def _worthwhile_updates(
    prev: QGaussians,
    proposed: QGaussians,
    changed_idx: Tensor,
    grid: QuantGrid,
    min_energy_levels: float,
) -> Tensor:
    """The subset of ``changed_idx`` (int64 [K]) whose update changes the picture enough to pay for its bits."""
    if min_energy_levels <= 0 or changed_idx.numel() == 0:
        return changed_idx
    old = dequantize(prev.index(changed_idx), grid)
    new = dequantize(proposed.index(changed_idx), grid)
    energy_levels = change_energy(old, new) * (255.0 * 255.0)
    return changed_idx[energy_levels >= min_energy_levels]


def _apply_updates(prev: QGaussians, proposed: QGaussians, keep_idx: Tensor) -> QGaussians:
    """``prev`` with rows ``keep_idx`` taken from ``proposed`` (same row count)."""
    rows = prev.rows().clone()
    rows[keep_idx] = proposed.rows()[keep_idx]
    return QGaussians.from_rows(rows)


def _delta_cost(cfg: CodecConfig, grid: QuantGrid, h: int, w: int) -> Tensor | None:
    """Per-column rate weights (float32 [8]) for the P-frame fit's loss, or None when off.

    The loss is the mean squared error in [0, 1] units, so one 8-bit level^2 summed over the
    frame is ``1 / (255^2 * 3 H W)`` of it; a change of one quantisation step costs about
    :data:`codec.rdo.BITS_PER_LOG2` bits, worth ``lambda`` levels^2 each.
    """
    lam, weight = cfg.fit.pframe_rd_lambda, cfg.fit.pframe_rate_weight
    if lam <= 0 or weight <= 0:
        return None
    per_level = weight * lam * BITS_PER_LOG2 / (255.0 * 255.0 * 3 * h * w)
    # per I-frame level: an update's bits grow with the log of its size, so a finer P-frame grid
    # adds a few bits per update, not a factor 2**refine (per fine level over-penalised moves:
    # carphone q8, 30 frames, xy refine 1: 0.4128 bpp / 33.63 dB, against 0.4230 / 33.81 here)
    return per_level / grid.level_steps(intra=True)  # diagonals' steps in log units, as the penalty


def _touched(prev: QGaussians, state: QGaussians) -> np.ndarray:
    """bool [len(state)]: rows a P-frame changed (they differ from ``prev``) or added."""
    n = len(prev)
    out = np.ones(len(state), dtype=bool)
    out[:n] = ~state.index(torch.arange(n)).equal_rows(prev).cpu().numpy()
    return out


def _set_rows(prev: QGaussians, idx: Tensor, values: QGaussians) -> QGaussians:
    """``prev`` with rows ``idx`` (int64 [K]) replaced by ``values`` (K rows)."""
    rows = prev.rows().clone()
    rows[idx] = values.rows()
    return QGaussians.from_rows(rows)


def encode_gop_report(
    frames: np.ndarray,
    config: CodecConfig,
    *,
    roi_mask: np.ndarray | None = None,
    progress: ProgressFn | None = None,
    device: str | torch.device = "cpu",
) -> GopEncodeResult:
    """Encode ``frames`` (uint8 [T, H, W, 3]) as one GOP; also return the reconstruction and per-frame stats.

    ``roi_mask`` (bool [H, W]) gives the region of interest a larger share of the I-frame's Gaussians.
    ``device`` ("cpu", "cuda", "cuda:N" or "auto") is where the fits run; quantisation, entropy
    coding, the rate-distortion choices and the closed-loop reconstruction always run on the CPU
    with the decoder's renderer, so any device's payload decodes to exactly ``recon``. Deterministic
    for the same frames, config, ``config.seed`` and device type.
    """
    t_count, h, w = check_frames(frames)
    dev = resolve_device(device)
    if roi_mask is not None and roi_mask.shape != (h, w):
        raise CodecConfigError(f"roi_mask must have shape {(h, w)}; got {roi_mask.shape}")
    backend = get_backend(config.backend, dev)  # fitting
    gen = torch.Generator().manual_seed(config.seed)
    roi = torch.from_numpy(roi_mask.astype(bool)) if roi_mask is not None else None
    fake_quant = None

    coded: list[tuple[FrameKind, bytes]] = []
    stats: list[FrameStats] = []
    recon = np.empty_like(frames)

    start, cpu_start = time.perf_counter(), time.process_time()
    frame = to_float(frames[0])
    q_state, grid, data, iters = _code_iframe(frame, config, backend, roi, gen, dev, frames)
    header_grid = grid  # a scene cut brings its own grid in its record; the header keeps the first
    ctx: np.ndarray | None = None  # rows the previous P-frame changed or added (entropy context)
    models = ModelMemory()  # histograms the P-frames since the last I-frame sent
    if config.quant.mode == "qat":
        fake_quant = _fake_quant_on(grid)
    ref = dequantize(q_state, grid)
    ref_img = render_canonical(ref, h, w)
    recon[0] = to_u8(ref_img)
    coded.append((FrameKind.I, data))
    stats.append(
        FrameStats(
            0,
            "I",
            len(data),
            psnr_db(frames[0], recon[0]),
            len(q_state),
            len(q_state),
            len(q_state),
            iters,
            time.perf_counter() - start,
            time.process_time() - cpu_start,
        )
    )
    if progress:
        progress(1, t_count)

    for t in range(1, t_count):
        start, cpu_start = time.perf_counter(), time.process_time()
        prev_frame, frame = frame, to_float(frames[t])
        cut = config.fit.scene_cut_psnr_db
        if cut > 0 and _is_scene_cut(psnr_db(frames[t], recon[t - 1]), stats[-1].psnr_db, cut):
            # scene cut: the reference has little to offer, start this frame afresh
            q_state, grid, data, iters = _code_iframe(
                frame, config, backend, roi, gen, dev, frames[t:]
            )
            ctx, models = None, ModelMemory()
            if config.quant.mode == "qat":
                fake_quant = _fake_quant_on(grid)
            data = (
                grid.to_bytes() + data
            )  # this I-frame brings its own grid for the rest of the GOP
            ref = dequantize(q_state, grid)
            ref_img = render_canonical(ref, h, w)
            recon[t] = to_u8(ref_img)
            coded.append((FrameKind.I_NEW_GRID, data))
            n = len(q_state)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            stats.append(
                FrameStats(
                    t, "I", len(data), psnr_db(frames[t], recon[t]), n, n, n, iters, seconds, cpu
                )
            )
            if progress:
                progress(t + 1, t_count)
            continue
        cost = _delta_cost(config, grid, h, w)
        res = fit_pframe(
            ref.to(dev),
            ref_img.to(dev),
            frame.to(dev),
            config.fit,
            backend,
            fake_quant=fake_quant,
            generator=gen,
            prev_frame=prev_frame.to(dev),
            delta_cost=cost.to(dev) if cost is not None else None,
        )
        n_ref = len(q_state)
        fitted = res.gaussians.detach().to("cpu")
        old_rows = quantize(fitted.index(torch.arange(n_ref)), grid, fine=True)
        changed_idx = torch.nonzero(~old_rows.equal_rows(q_state)).flatten()
        # added rows are intra coded: I-frame levels
        added = quantize(fitted.index(torch.arange(n_ref, len(fitted))), grid)
        added = added.index(canonical_order(added))  # added rows travel in Morton order, like intra
        if config.fit.pframe_rd_lambda > 0:
            choice = rd_select(
                q_state,
                old_rows,
                changed_idx,
                added,
                grid,
                frame,
                ref_img,
                backend,
                config.fit.pframe_rd_lambda,
            )
            changed_idx = changed_idx[choice.keep_updates]
            # a subset in ascending order stays Morton-sorted
            added = added.index(choice.keep_added)
            old_rows = _set_rows(q_state, changed_idx, choice.rows)
        else:
            changed_idx = _worthwhile_updates(
                q_state, old_rows, changed_idx, grid, config.fit.pframe_min_update_energy
            )
            old_rows = _apply_updates(q_state, old_rows, changed_idx)
        data = encode_inter(
            q_state, changed_idx, old_rows.index(changed_idx), added, grid, ctx, models
        )
        new_state = QGaussians.cat([old_rows, added])  # exactly what the decoder rebuilds
        ctx = _touched(q_state, new_state)
        q_state = new_state
        ref = dequantize(q_state, grid)
        ref_img = render_canonical(ref, h, w)
        recon[t] = to_u8(ref_img)
        coded.append((FrameKind.P, data))
        stats.append(
            FrameStats(
                t,
                "P",
                len(data),
                psnr_db(frames[t], recon[t]),
                len(q_state),
                int(changed_idx.numel()),
                len(added),
                res.iters,
                time.perf_counter() - start,
                time.process_time() - cpu_start,
            )
        )
        if progress:
            progress(t + 1, t_count)

    # the enhancer: a post-filter on the finished closed-loop reconstruction
    enh = enhance_gop(frames, recon, config)
    header = GopHeader(h, w, t_count, header_grid, flags=RENDER_CANONICAL)
    payload = pack_gop(header, coded, enh.record)
    return GopEncodeResult(
        payload=payload,
        recon=recon,
        frames=stats,
        enhanced=enh.enhanced if enh.record else None,
        enhancer_bytes=len(enh.record),
        enhance_kind=enh.kind,
        enhance_seconds=enh.seconds,
    )


def encode_gop(
    frames: np.ndarray,
    config: CodecConfig,
    *,
    roi_mask: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> bytes:
    """Encode ``frames`` (uint8 [T, H, W, 3]) into one independently decodable GOP payload."""
    return encode_gop_report(frames, config, roi_mask=roi_mask, device=device).payload


EMPTY_UPDATE = b"\x00\x00"  # a P-frame record changing and adding nothing: the picture repeats


def iter_gop_frames(
    payload: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    expect: tuple[int, int, int] | None = None,
    *,
    enhance: bool = True,
) -> Iterator[np.ndarray]:
    """Decode a GOP payload frame by frame (uint8 [H, W, 3] each, a new array per frame).

    ``limits`` bounds the work the payload may ask for (:class:`codec.bitstream.DecodeLimits`),
    checked before any frame is rendered; ``expect`` (n_frames, width, height), what the
    container says, must match the GOP header. Any malformed or over-limit payload raises
    BitstreamError. An unchanged P-frame repeats the previous picture without rendering.
    With ``enhance`` (the default) a GOP that carries an enhancer record yields enhanced frames
    (a post-filter: the Gaussians are decoded the same); ``enhance=False`` gives the raw output."""
    header, coded, enhancer = unpack_gop_enhanced(payload)
    post = frame_enhancer(enhancer, header.version) if enhance and enhancer else None
    h, w, t_count = header.height, header.width, header.n_frames
    what = "GOP"
    if expect is not None and expect != (t_count, w, h):
        raise BitstreamError(
            f"{what} header says {t_count} frames of {w}x{h}, the container "
            f"{expect[0]} of {expect[1]}x{expect[2]}"
        )
    if not (1 <= h <= MAX_SIDE_PX and 1 <= w <= MAX_SIDE_PX):
        raise BitstreamError(f"{what} header claims {w}x{h} frames, outside the codec's limits")
    limits.check_gop(w, h, t_count, len(payload), what)
    n_render = sum(1 for kind, data in coded if kind != FrameKind.P or data != EMPTY_UPDATE)
    limits.check_rendered(w, h, n_render, len(payload), what)
    if header.flags & ~KNOWN_GOP_FLAGS:
        raise BitstreamError(
            f"GOP header flags 0x{header.flags:02x} use features this decoder does not know; "
            "a newer splatpack wrote this file"
        )
    legacy = TorchTileBackend()

    def render(g: Gaussians) -> np.ndarray:
        if header.flags & RENDER_CANONICAL:
            return render_canonical_u8(g, h, w)
        return to_u8(legacy.render_nograd(g, h, w))

    state: QGaussians | None = None
    ctx: np.ndarray | None = None
    models = ModelMemory()
    picture: np.ndarray | None = None
    grid, fmt = header.grid, header.version  # older formats decode too (docs/FORMAT.md)
    grid_size = grid_nbytes(fmt)
    for kind, data in coded:
        if kind == FrameKind.I:
            state, ctx, models = decode_intra(data, grid, fmt), None, ModelMemory()
        elif kind == FrameKind.I_NEW_GRID:
            grid = QuantGrid.from_bytes(data[:grid_size], fmt)
            state, ctx, models = decode_intra(data[grid_size:], grid, fmt), None, ModelMemory()
        elif state is None:
            raise BitstreamError("GOP starts with a P-frame; the first frame must be an I-frame")
        elif data == EMPTY_UPDATE and picture is not None:
            # nothing changes: the same state renders to the same picture; no row was touched
            ctx = np.zeros(len(state), dtype=bool)
            yield picture.copy()  # (the shown picture: enhanced when the GOP has a record)
            continue
        else:
            new_state = decode_inter(data, state, grid, ctx, models, fmt)
            ctx = _touched(state, new_state)
            state = new_state
        limits.check_gaussians(w, h, len(state), what)
        raw = render(dequantize(state, grid))
        picture = raw if post is None else post(raw)
        yield picture


def decode_gop(
    payload: bytes, limits: DecodeLimits = DEFAULT_LIMITS, *, enhance: bool = True
) -> np.ndarray:
    """Decode a GOP payload to uint8 [T, H, W, 3]; any malformed payload raises BitstreamError.
    Holds the whole GOP: :func:`iter_gop_frames` streams it. With ``enhance`` (the default) a GOP
    that carries an enhancer record is enhanced; ``enhance=False`` gives the raw Gaussian output
    (what the closed loop predicted from)."""
    header, _ = unpack_gop(payload)
    t_count, h, w = header.n_frames, header.height, header.width
    limits.check_gop(w, h, t_count, len(payload), "GOP")
    if t_count * h * w * 3 > MAX_DECODE_BYTES:
        raise BitstreamError(
            f"GOP would decode to {t_count * h * w * 3} bytes, over the {MAX_DECODE_BYTES} limit"
        )
    out = np.empty((t_count, h, w, 3), dtype=np.uint8)
    for t, frame in enumerate(iter_gop_frames(payload, limits, enhance=enhance)):
        out[t] = frame
    return out
