"""Would seed 001's residual side information pay with the shipped enhancer weights? A measurement
on the plain encodes cached by ``bench/enhance_bd.py``, before any bitstream field is built.

For each cached GOP it compares, by the codec's own rule ``J = D + lambda R`` (``D`` squared error
in 8-bit levels^2, ``R`` the bits beyond the empty 1-byte enhancer field, ``lambda`` the preset's
``fit.pframe_rd_lambda`` at the cache's quality):

- plain: no enhancer record;
- base: the network at the best of the encoder's three strengths (a 4-byte record);
- base + side, for each side-information step the network was trained with
  (``train.SIDE_STEPS``), once with one map for the whole GOP (the mean residual) and once with a
  map per frame: the rendering residual ``source - decoded`` averaged over 16x16 cells
  (``model.side_map``), quantised, and range coded with constriction exactly as a record would
  carry it (QuantizedLaplace on [-127, 127] with the fitted scale; 3 header bytes: step and
  mode, scale, length). ``R`` counts those bytes on top of the base record.

    OMP_NUM_THREADS=1 .venv/bin/python bench/enhance_side_info.py \\
        var/enhance_bench/carphone_pristine-f10-g10-fast-q2.npz \\
        var/enhance_bench/carphone_pristine-f10-g10-fast-q6.npz
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import constriction
import numpy as np
import torch

from codec.bitstream import write_varint
from codec.config import CodecConfig
from codec.enhance.adapt import T_SEARCH, sse
from codec.enhance.model import EnhanceNet, side_image, side_map, strength_of_psnr
from codec.enhance.train import SIDE_STEPS
from codec.enhance.weights import load_enhancer

SIDE_MAX = 127
BASE_RECORD_BYTES = 4  # tag, t, flags
SIDE_HEADER_BYTES = 2  # step and mode, scale (the length varint is counted as coded)
_MODEL = constriction.stream.model.QuantizedLaplace(-SIDE_MAX, SIDE_MAX)


def _nchw(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames_u8)).permute(0, 3, 1, 2).float() / 255.0


def _run(net: EnhanceNet, recon: np.ndarray, t: float, side: torch.Tensor | None) -> np.ndarray:
    """The network at strength ``t`` with side input ``side`` ([T, 3, H, W] or None) -> uint8."""
    x = _nchw(recon)
    with torch.no_grad():
        y = net(x, torch.full((x.shape[0],), t), None, side)
    return (y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def coded_bytes(levels: np.ndarray) -> int:
    """Bytes of ``levels`` (any shape, integers) range coded as a record would carry them."""
    flat = np.clip(levels.reshape(-1), -SIDE_MAX, SIDE_MAX).astype(np.int32)
    scale = max(1, round(float(np.mean(np.abs(flat))) * 16)) / 16.0
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(flat, _MODEL, np.zeros(flat.size), np.full(flat.size, scale))
    body = enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0") or b"\0"
    return SIDE_HEADER_BYTES + len(write_varint(len(body))) + len(body)


def measure(path: Path, net: EnhanceNet) -> list[tuple[str, int, float, float]]:
    """(variant, record bytes, SSE change % against plain, J change in % of plain D) rows."""
    q = int(re.search(r"-q(\d+)\.npz$", path.name).group(1))  # type: ignore[union-attr]
    lam = CodecConfig.preset("fast", q).fit.pframe_rd_lambda
    with np.load(path) as z:
        source, recon = z["source0"], z["recon0"]  # the first GOP
        payload_bytes = int(z["payload0"].size)
    d_plain = sse(recon, source)
    n_px = recon.size
    t0 = strength_of_psnr(float(10 * np.log10(255.0**2 * n_px / max(d_plain, 1e-9))))
    tried = {int(np.clip(round((t0 + dt) * 255), 0, 255)) for dt in (0.0, -T_SEARCH, T_SEARCH)}
    d_base, level = min((sse(_run(net, recon, lv / 255, None), source), lv) for lv in tried)
    t = level / 255.0

    def row(name: str, n_bytes: int, d: float) -> tuple[str, int, float, float]:
        j = d + lam * 8.0 * n_bytes
        return (name, n_bytes, (d - d_plain) / d_plain * 100, (j - d_plain) / d_plain * 100)

    rows = [row("plain", 0, d_plain), row(f"base t={t:.3f}", BASE_RECORD_BYTES, d_base)]
    residual = _nchw(source) - _nchw(recon)  # [T, 3, H, W]
    h, w = recon.shape[1:3]
    for step in SIDE_STEPS:
        for mode in ("GOP map", "frame maps"):
            res = residual.mean(0, keepdim=True) if mode == "GOP map" else residual
            levels = side_map(res, step).clamp(-SIDE_MAX, SIDE_MAX)  # [1 or T, 3, h', w']
            side = side_image(levels, step, h, w).expand(residual.shape[0], -1, -1, -1)
            d = sse(_run(net, recon, t, side), source)
            n = BASE_RECORD_BYTES + coded_bytes(levels.numpy())
            rows.append(row(f"base + side, {mode}, step {step * 255:.0f}/255", n, d))
    print(f"{path.name}: lambda {lam:g}, GOP payload {payload_bytes} bytes, plain D {d_plain:.4g}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("caches", type=Path, nargs="+", help="enhance_bd.py cache files (.npz)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net, sha = load_enhancer()
    print(f"weights sha256 {sha[:16]}...")
    for path in args.caches:
        rows = measure(path, net)
        print("| variant | record bytes | SSE change | J change (D + lambda R) |")
        print("| --- | --- | --- | --- |")
        for name, n, dd, dj in rows:
            print(f"| {name} | {n} | {dd:+.2f} % | {dj:+.2f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
